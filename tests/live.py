"""A real paperchart server on a loopback port, in this process (uvicorn in a thread)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from litestar import Litestar

from server.app import create_app
from server.auth.assertion import generate_client_key, token_request
from server.config import Settings, load_settings


def _ephemeral_ports() -> range:
    try:
        low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port free now, for a server that binds it later. It is taken from below the
    ephemeral range: a port from that range can meanwhile become the local end of an outgoing
    connection (a client already retrying the server that is not up yet), and the bind fails."""
    ephemeral = _ephemeral_ports()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in ephemeral:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class LiveServer:
    def __init__(self, app: Litestar, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.base = settings.public_base_url

    def token(self, scopes: str, *, audience: str = "fhir") -> str:
        """A token from the server's own token endpoint, for a backend client registered with ``scopes``."""
        key = generate_client_key()
        registry = self.app.state.services.auth.registry
        client = registry.add_client(
            name="test client", kind="backend", scopes=scopes.split(), jwks={"keys": [key.as_dict(private=False)]}
        )
        form = token_request(key, client.client_id, f"{self.base}/auth/token", scopes)
        if audience == "mcp":
            form["resource"] = f"{self.base}/mcp"
        response = httpx.post(f"{self.base}/auth/token", data=form)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


@contextmanager
def live_server(data_dir: Path, terminology: Path | None = None) -> Iterator[LiveServer]:
    """The app on a loopback port; with ``terminology``, that index codes and serves type-ahead."""
    import uvicorn

    port = free_port()
    settings = load_settings(
        {},
        data_dir=data_dir,
        port=port,
        mllp_enabled=False,
        semantic_search=terminology is not None,
        terminology_path=terminology,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise AssertionError("server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(app, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
