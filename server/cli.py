"""The ``paperchart`` command: ``serve`` the API, ``extract`` a file to a FHIR Bundle on stdout, and more.

Authorization commands (``clients``, ``users``, ``token``, ``keys``) live in ``server.auth.cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from server.config import Settings, load_settings
from server.errors import ConfigurationError, PaperchartError
from terminology import TerminologyImportError, TerminologyService
from terminology.importers import FORMATS

if TYPE_CHECKING:
    from server.pipeline.page import OcrPage

_CONTENT_TYPES = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".txt": "text/plain",
}


class _ProgressBars:
    """tqdm bars on stderr, one per phase (import, embed); quiet when stderr is not a terminal."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, object] = {}
        self.enabled = sys.stderr.isatty()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar: Any = self._bars.get(phase)
        if bar is None:
            bar = self._tqdm(
                total=total or None, desc=phase, unit="term" if phase == "embed" else "concept", file=sys.stderr
            )
            self._bars[phase] = bar
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()  # type: ignore[attr-defined]


def _build_builtin_terminology(settings: Settings, *, fresh: bool = True) -> None:
    from server.services import build_embedder
    from terminology.index import BUILTIN_CONTENT, BUILTIN_CONTENT_KEY, build_index, builtin_importers

    embedder = build_embedder(settings)
    if embedder is None:
        raise ConfigurationError("building the terminology index needs PAPERCHART_SEMANTIC_SEARCH=true")
    print(
        f"paperchart: building the built-in terminology index at {settings.terminology_index_path} "
        "(ICD-10-CM, SNOMED CT GPS, LOINC subset, UCUM; a few minutes on 2 cores)",
        file=sys.stderr,
        flush=True,
    )
    bars = _ProgressBars()
    try:
        counts = build_index(
            settings.terminology_index_path,
            embedder,
            builtin_importers(),
            fresh=fresh,
            progress=bars,
            meta={BUILTIN_CONTENT_KEY: str(BUILTIN_CONTENT)},
        )
    finally:
        bars.close()
    for name, count in counts.items():
        print(f"  {name}: {count} concepts", file=sys.stderr)


def _check_terminology(settings: Settings) -> None:
    """Refuse to start, with the reason, on an embedding model or an index that cannot be used
    (a missing model folder, an index embedded by another model), before the app starts."""
    from server.services import build_embedder, build_terminology

    if not settings.terminology_index_path.exists():
        build_embedder(settings)
    elif (terminology := build_terminology(settings)) is not None:  # builds the embedder too
        if terminology.builtins_outdated():
            print(f"paperchart: {_OUTDATED}", file=sys.stderr, flush=True)
        terminology.close()


_OUTDATED = (
    "the terminology index's built-in code systems were built by an older paperchart; "
    "`paperchart terminology build` adds what they have gained since (it serves as it is meanwhile)"
)


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
    _check_terminology(settings)
    if args.build_terminology and settings.semantic_search and not settings.terminology_index_path.exists():
        # First start: build the index in a separate process so the API is usable at once; the app
        # attaches the index (and starts coding) when the build swaps it in.
        print(
            "paperchart: no terminology index yet; building it in the background "
            "(progress below; codes are assigned once it is ready)",
            file=sys.stderr,
            flush=True,
        )
        subprocess.Popen([sys.executable, "-m", "server.cli", "terminology", "build"])
    print(f"paperchart: serving FHIR at {settings.fhir_base_url} (data in {settings.data_dir.resolve()})", flush=True)
    print(
        "paperchart: every clinical route needs a SMART access token. A first one, for development:\n"
        "  paperchart clients add --name dev --scopes 'system/*.cruds' --generate-key dev-client.jwk\n"
        "  paperchart token --client-id <client_id printed above> --key dev-client.jwk --scopes 'system/*.cruds'\n"
        '  curl -H "Authorization: Bearer $TOKEN" ' + settings.fhir_base_url + "/Patient",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _mllp(args: argparse.Namespace) -> int:
    """The MLLP listener and the extraction workers without the HTTP API."""
    import asyncio
    import signal

    from server.hl7 import Hl7Service, ResultSender
    from server.jobs import JobRunner
    from server.services import build_mllp, build_pipeline, build_store, build_terminology
    from server.store.audit import AuditLog

    overrides: dict[str, object] = {"mllp_enabled": True}
    if args.port:
        overrides["mllp_port"] = args.port
    settings = load_settings(None, **overrides)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        store = build_store(settings)
        pipeline = build_pipeline(settings, build_terminology(settings))
        jobs = JobRunner(settings, store, pipeline)
        jobs.start()
        audit = AuditLog(store)  # its records commit with the messages they describe
        server = build_mllp(settings, Hl7Service(settings, store, pipeline), jobs, audit)
        await server.start()
        results = ResultSender(settings, store) if settings.hl7_outbound_host else None
        if results is not None:
            results.start()
        print(f"paperchart: MLLP on {settings.mllp_host}:{server.bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.stop()  # in-flight messages are finished and acknowledged first
        await jobs.stop()
        if results is not None:
            await results.stop()
        store.close()

    asyncio.run(run())
    return 0


def _extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fhir_profiles import BundleContext
    from server.pipeline import software_name
    from server.services import build_pipeline, build_terminology
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
    if settings.terminology_index_path.exists():
        terminology = build_terminology(settings)
    else:
        terminology = None
        print(
            f"paperchart: no terminology index at {settings.terminology_index_path.resolve()}: the Bundle's resources"
            " are not coded (build one: paperchart terminology build)",
            file=sys.stderr,
        )
    pipeline = build_pipeline(settings, terminology)
    document_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"file:{path.resolve()}"))
    context = BundleContext(
        bundle_id=str(uuid.uuid4()),
        id_seed=str(uuid.uuid4()),
        document_reference_id=document_id,
        fhir_base_url=settings.fhir_base_url,
        recorded=now_instant(),
        software=software_name(),
        medication_resource=settings.medication_resource,
        mrn_system=settings.mrn_system,
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
        if terminology is not None:
            terminology.close()
    output: Any = _page_model(result.pages) if args.pages else result.bundle
    json.dump(output, sys.stdout, indent=2 if args.pretty else None)
    sys.stdout.write("\n")
    return 0


def _page_model(pages: Sequence[OcrPage]) -> list[dict[str, Any]]:
    """What was read, page by page: text, confidence, tables of cells, form fields and checkboxes."""
    from server.pipeline.tables import find_fields, find_tables

    return [
        {
            "page": page.number,
            "source": page.source,
            "words": len(page.words),
            "meanConfidence": round(page.mean_confidence, 4),
            "text": page.text,
            "tables": [
                {"header": list(t.header), "rows": [[c.text if c else "" for c in row] for row in t.rows]}
                for t in find_tables(page)
            ],
            "fields": [{"label": f.label, "value": f.value} for f in find_fields(page)],
            "checkboxes": [
                {"label": c.label, "checked": c.checked, "confidence": c.confidence} for c in page.checkboxes
            ],
        }
        for page in pages
    ]


def _terminology_build(args: argparse.Namespace) -> int:
    _build_builtin_terminology(load_settings())
    return 0


def _terminology_import(args: argparse.Namespace) -> int:
    from server.services import build_embedder
    from terminology.importers import create_importer
    from terminology.index import build_index

    settings = load_settings()
    embedder = build_embedder(settings)
    if embedder is None:
        raise ConfigurationError("importing needs PAPERCHART_SEMANTIC_SEARCH=true (designations are embedded)")
    bars = _ProgressBars()
    try:
        counts = build_index(
            settings.terminology_index_path, embedder, [create_importer(args.format, args.path)], progress=bars
        )
    finally:
        bars.close()
    for name, count in counts.items():
        print(f"imported {name}: {count} concepts")
    return 0


def _open_terminology() -> TerminologyService:
    from server.services import build_terminology

    service = build_terminology(load_settings())
    if service is None:
        raise ConfigurationError("no terminology index yet; run: paperchart terminology build")
    return service


def _terminology_lookup(args: argparse.Namespace) -> int:
    from terminology import resolve_system

    service = _open_terminology()
    candidates = service.lookup(
        args.text,
        systems=[resolve_system(s) for s in args.system],
        semantic_types=args.semantic_types,
        limit=args.limit,
        mode=args.mode,
    )
    if args.json:
        print(json.dumps([msgspec.to_builtins(c) for c in candidates], indent=2))
        return 0
    for rank, c in enumerate(candidates, start=1):
        print(
            f"{rank}. {c.code:<12} {c.display}  [{c.system.rsplit('/', 1)[-1]}; matched {c.matched!r}; "
            f"score {c.score:.4f}]"
        )
    if not candidates:
        print("no match")
    return 0


def _terminology_info(args: argparse.Namespace) -> int:
    service = _open_terminology()
    print(f"embedding model: {service.embedded_by or 'none'}")
    if service.builtins_outdated():
        print(f"note: {_OUTDATED}")
    for summary in service.code_systems():
        info = summary.info
        print(
            f"{info.name} ({info.system}), version {info.version}: {summary.concepts} concepts\n"
            f"  source: {info.source}\n  licence: {info.licence}\n  imported: {summary.imported_at}"
        )
    return 0


def _mcp(args: argparse.Namespace) -> int:
    """MCP over stdio for desktop assistants, acting with the token in PAPERCHART_MCP_TOKEN."""
    import anyio

    from mcp_tools import CallerSource, build_mcp_server
    from server.services import build_services, close_services

    settings = load_settings()
    # stdout is the protocol channel: every log line goes to stderr
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.mcp_token:
        raise ConfigurationError(
            "set PAPERCHART_MCP_TOKEN to an access token for the MCP endpoint "
            "(paperchart token ... --audience mcp); stdio mode never acts as an implicit administrator"
        )

    async def run() -> None:
        services = build_services(settings)
        try:
            source = CallerSource(lambda: services, stdio_token=settings.mcp_token)
            source.caller(None)  # a bad or expired token fails here, before the assistant connects
            services.jobs.start()
            try:
                await build_mcp_server(source).run_stdio_async()
            finally:
                await services.jobs.stop()
        finally:
            close_services(services)

    anyio.run(run)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paperchart", description="Clinical documents in, coded FHIR R4 out.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server (FHIR API under /fhir)")
    serve.add_argument("--host", help="address to bind (default PAPERCHART_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PAPERCHART_PORT or 8080)")
    serve.add_argument(
        "--no-build-terminology",
        dest="build_terminology",
        action="store_false",
        help="do not build the terminology index on first start",
    )
    serve.set_defaults(handler=_serve)

    terminology = commands.add_parser("terminology", help="build, import, search and describe code systems")
    actions = terminology.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="(re)build the index of built-in code systems")
    build.set_defaults(handler=_terminology_build)
    import_ = actions.add_parser("import", help="import a code system from the user's own release files")
    import_.add_argument("--format", required=True, choices=FORMATS)
    import_.add_argument(
        "path",
        type=Path,
        help="a release file, or a release folder (snomed-rf2; icd10cm-tabular: CMS's unzipped"
        " icd10cm-table-index-YYYY, whose Alphabetic Index is imported too)",
    )
    import_.set_defaults(handler=_terminology_import)
    lookup = actions.add_parser("lookup", help="find codes for a phrase")
    lookup.add_argument("text")
    lookup.add_argument("--system", action="append", default=[], help="icd10cm, snomed, loinc, rxnorm, ucum or a URI")
    lookup.add_argument(
        "--type",
        action="append",
        default=[],
        dest="semantic_types",
        help="semantic type filter: disorder, finding, drug, substance, lab-test, unit...",
    )
    lookup.add_argument("--limit", type=int, default=5)
    lookup.add_argument("--mode", choices=("hybrid", "lexical", "semantic"), default="hybrid")
    lookup.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lookup.set_defaults(handler=_terminology_lookup)
    info = actions.add_parser("info", help="code systems in the index, with versions, sources and licences")
    info.set_defaults(handler=_terminology_info)

    mllp = commands.add_parser("mllp", help="run only the HL7 v2 MLLP listener and the extraction workers")
    mllp.add_argument("--port", type=int, help="port (default PAPERCHART_MLLP_PORT or 2575)")
    mllp.set_defaults(handler=_mllp)

    mcp = commands.add_parser("mcp", help="MCP server over stdio (token from PAPERCHART_MCP_TOKEN)")
    mcp.set_defaults(handler=_mcp)

    extract = commands.add_parser("extract", help="extract a PDF or image and print a FHIR Bundle (JSON)")
    extract.add_argument("file", type=Path)
    extract.add_argument("--content-type", help="override the type guessed from the file name")
    extract.add_argument("--pretty", action="store_true", help="indent the JSON")
    extract.add_argument(
        "--pages",
        action="store_true",
        help="print what was read (text, tables, form fields, checkboxes) instead of the Bundle",
    )
    extract.set_defaults(handler=_extract)

    from server.auth.cli import add_commands

    add_commands(commands)

    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except PaperchartError as exc:
        print(f"paperchart: {exc.message}", file=sys.stderr)
        return 1
    except TerminologyImportError as exc:
        print(f"paperchart: cannot import {exc}; the existing index is unchanged", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
