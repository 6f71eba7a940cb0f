"""The ``paperchart`` command: ``serve`` the API, ``extract`` a file to a FHIR Bundle on stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path

from server.config import load_settings
from server.errors import PaperchartError

_CONTENT_TYPES = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = load_settings(None, **overrides)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"paperchart: serving FHIR at {settings.fhir_base_url} (data in {settings.data_dir.resolve()})", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_profiles import BundleContext
    from server.pipeline import software_name
    from server.services import build_pipeline
    from server.store.sqlite import now_instant

    settings = load_settings()
    path: Path = args.file
    try:
        content = path.read_bytes()
    except OSError as exc:
        print(f"paperchart: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    content_type = args.content_type or _CONTENT_TYPES.get(path.suffix.lower())
    if content_type is None:
        print(f"paperchart: cannot tell the type of {path.name}; pass --content-type", file=sys.stderr)
        return 2
    pipeline = build_pipeline(settings)
    document_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"file:{path.resolve()}"))
    context = BundleContext(
        bundle_id=str(uuid.uuid4()),
        id_seed=str(uuid.uuid4()),
        document_reference_id=document_id,
        fhir_base_url=settings.fhir_base_url,
        recorded=now_instant(),
        software=software_name(),
    )
    bar = tqdm(total=0, unit="page", desc="OCR", disable=not sys.stderr.isatty(), file=sys.stderr)

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "ocr":
            bar.total = total
            bar.update(done - bar.n)

    try:
        result = pipeline.run(content, content_type, context, progress)
    except PaperchartError as exc:
        print(f"paperchart: {exc.message}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    json.dump(result.bundle, sys.stdout, indent=2 if args.pretty else None)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paperchart", description="Clinical documents in, coded FHIR R4 out.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server (FHIR API under /fhir)")
    serve.add_argument("--host", help="address to bind (default PAPERCHART_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PAPERCHART_PORT or 8080)")
    serve.set_defaults(handler=_serve)

    extract = commands.add_parser("extract", help="extract a PDF or image and print a FHIR Bundle (JSON)")
    extract.add_argument("file", type=Path)
    extract.add_argument("--content-type", help="override the type guessed from the file name")
    extract.add_argument("--pretty", action="store_true", help="indent the JSON")
    extract.set_defaults(handler=_extract)

    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except PaperchartError as exc:
        print(f"paperchart: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
