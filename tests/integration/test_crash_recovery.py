"""Kill the server mid-job: after a restart the job runs again and yields exactly one Bundle."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import rendered
from tests.live import free_port
from tests.smart import bearer, fetch_token, register_with_cli


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PAPERCHART_DATA_DIR": str(data_dir),
        "PAPERCHART_PORT": str(port),
        "PAPERCHART_JOB_LEASE_SECONDS": "2",
        "PAPERCHART_LOG_LEVEL": "WARNING",
    }


@contextmanager
def server(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = server_env(data_dir, port)
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--no-build-terminology"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("server did not start")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def multipage_fax() -> bytes:
    """A 4-page TIFF fax: long enough to kill the server while OCR is running."""
    pages = [
        Image.open(io.BytesIO(rendered(kind, seed=20).png_pages[0]))
        for kind in ("clinic_note", "lab_report", "medication_list", "clinic_note")
    ]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")
    return buffer.getvalue()


@pytest.mark.slow
def test_killed_mid_job_then_restarted_gives_one_bundle(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    reference = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"contentType": "image/tiff", "data": base64.b64encode(multipage_fax()).decode()}}],
    }
    backend = register_with_cli(
        server_env(tmp_path / "data", port), tmp_path / "client.jwk", f"http://127.0.0.1:{port}"
    )
    with server(tmp_path / "data", port) as process:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        http.headers.update(bearer(fetch_token(http, backend)))
        document = http.post(f"{base}/DocumentReference", json=reference).json()
        accepted = http.post(f"{base}/DocumentReference/{document['id']}/$extract")
        status_url = accepted.headers["Content-Location"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until OCR is under way, then pull the plug
            progress = http.get(status_url).headers.get("X-Progress", "")
            if progress.startswith("ocr"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("job never started OCR")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    with server(tmp_path / "data", port):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            response = http.get(status_url)
            if response.status_code != 202:
                break
            time.sleep(0.5)
        assert response.status_code == 200, response.text
        bundle = response.json()
        bundles = http.get(f"{base}/Bundle").json()
        patients = http.get(f"{base}/Patient").json()
    assert bundles["total"] == 1 and bundles["entry"][0]["resource"]["id"] == bundle["id"]
    assert patients["total"] == 1
    # the second attempt, not a duplicate: the job's row says it was tried twice
    from terminology.sqlite_driver import connect

    attempts = connect(tmp_path / "data" / "paperchart.db").execute("SELECT attempts FROM jobs").fetchall()
    assert attempts == [(2,)]
