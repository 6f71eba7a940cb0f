"""Settings from the environment (``PAPERCHART_*``): the only place the environment is read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

ENV_PREFIX = "PAPERCHART_"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of one paperchart process. Defaults are the embedded, single-laptop setup."""

    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    # Absolute base under which FHIR resources are addressed in Bundle fullUrls and Location headers.
    public_base_url: str = "http://127.0.0.1:8080"

    # Limits on what a client may send (ARCHITECTURE.md "Security model").
    max_upload_bytes: int = 50 * 1024 * 1024
    max_pages: int = 100
    max_page_pixels: int = 40_000_000  # a 300 dpi A3 page is ~17.4 M pixels

    rasterize_dpi: int = 200
    ocr_engine: Literal["rapidocr", "paddleocr"] = "rapidocr"  # paddleocr: PaddleOCR on a GPU ('.[gpu]')
    paddle_device: str = "gpu:0"
    paddle_det_model_dir: Path | None = None  # exported inference models, for a machine without internet
    paddle_rec_model_dir: Path | None = None
    ocr_confidence_threshold: float = 0.75
    ocr_threads: int = 0  # 0: let ONNX Runtime use every core
    ocr_page_timeout_seconds: float = 120.0  # a page taking longer is left unread (and flagged)
    ocr_det_max_side: int = 1280  # pixels: the page size text is detected at (0: full size)
    # a word's confidence from its characters': "mean", or "min" (flags more misread handwriting)
    ocr_word_score: Literal["mean", "min"] = "mean"
    extractor: Literal["rules", "llm"] = "rules"
    # the LLM extractor: any OpenAI-compatible server (vLLM in production, llama.cpp's server locally)
    llm_base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    llm_model: str = "default"
    llm_dialect: Literal["json_schema", "json_object"] = "json_schema"  # vLLM/OpenAI vs llama.cpp
    llm_timeout_seconds: float = 120.0
    llm_api_key: str | None = None
    llm_max_prompt_chars: int = 24_000  # a longer document goes to the model in parts, cut between pages
    llm_concurrency: int = 4  # parts of one document in flight at once
    # who picks a mention's code among the index's candidates: "similarity" (a threshold), "llm" (the
    # LLM server, constrained to the candidates); "auto": the LLM when it is the extractor
    code_chooser: Literal["auto", "similarity", "llm"] = "auto"
    # "similarity": a top candidate this close in meaning (cosine), or equal to a designation, is
    # coded; the rest go to review as code-unresolved. Higher: fewer wrong codes, more review
    code_accept_similarity: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.8
    date_order: Literal["DMY", "MDY"] = "DMY"
    # how medications are written: R4's MedicationStatement, or US Core's MedicationRequest
    medication_resource: Literal["MedicationStatement", "MedicationRequest"] = "MedicationStatement"
    # the identifier system (namespace) of the MRNs printed on this deployment's documents
    mrn_system: str | None = None

    workers: int = 1
    job_lease_seconds: float = 60.0
    job_max_attempts: int = 3
    job_poll_seconds: float = 0.5
    sync_wait_seconds: float = 120.0

    # HL7 v2 over MLLP (started with the app); TLS when a certificate and key are given
    mllp_enabled: bool = True
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_max_message_bytes: int = 96 * 1024 * 1024
    mllp_idle_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None  # require client certificates signed by this CA
    # Results back to the EHR: an ORU^R01 over MLLP for each released Bundle of a document that came
    # in over HL7, to this host (unset: nothing is sent). TLS when a CA to verify it by is given.
    hl7_outbound_host: str | None = None
    hl7_outbound_port: int = 2575
    hl7_outbound_tls_ca: Path | None = None
    hl7_outbound_ack_timeout_seconds: float = 30.0
    hl7_outbound_retry_seconds: float = 5.0  # first wait after a failed delivery; doubles, up to 10 min

    # Terminology index (built by `paperchart terminology build`); semantic search loads torch.
    terminology_path: Path | None = None
    semantic_search: bool = True
    # a local sentence-transformers model folder to embed with instead of the built-in
    # all-MiniLM-L6-v2 (e.g. a biomedical model); the index must be rebuilt after a change
    embedding_model: Path | None = None
    # where the embedding model runs: "cpu", "cuda", "cuda:N", or "auto" (a GPU when torch sees one);
    # a GPU embeds an index build's designations many times faster, and gives the same vectors
    embedding_device: Annotated[str, msgspec.Meta(pattern=r"^(cpu|auto|cuda(:[0-9]+)?)$")] = "cpu"

    # Encryption at rest: a base64 256-bit master key, else a keyring file (created on first start)
    master_key: str | None = None
    master_key_file: Path | None = None

    # SMART authorization server (built in) and resource server
    access_token_lifetime_seconds: int = 600
    refresh_token_lifetime_seconds: int = 8 * 3600
    authorization_code_lifetime_seconds: int = 60
    # trust tokens from an external identity provider too (Keycloak, Epic, Azure AD style)
    external_issuer: str | None = None
    external_jwks_url: str | None = None
    external_jwks_file: Path | None = None
    external_audience: str | None = None  # default: this server's FHIR base URL

    # `paperchart mcp` (stdio): the access token the desktop assistant acts with (audience: MCP URL)
    mcp_token: str | None = None

    log_level: str = "INFO"

    @property
    def fhir_base_url(self) -> str:
        return self.public_base_url.rstrip("/") + "/fhir"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "paperchart.db"

    @property
    def terminology_index_path(self) -> Path:
        return self.terminology_path or self.data_dir / "terminology.db"

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def issuer(self) -> str:
        """The authorization server's issuer (RFC 8414: metadata at /.well-known/oauth-authorization-server)."""
        return self.public_base_url.rstrip("/")

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint, also the audience (RFC 8707 resource) of tokens meant for it."""
        return self.public_base_url.rstrip("/") + "/mcp"

    @property
    def auth_base_url(self) -> str:
        return self.public_base_url.rstrip("/") + "/auth"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"


def _decode_path(type_: type, value: object) -> object:
    if type_ is Path and isinstance(value, str | Path) and value != "":
        return Path(value)
    raise NotImplementedError


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from ``PAPERCHART_<FIELD>`` variables; explicit overrides win.

    Values are converted to each field's type; a bad value raises ``ConfigurationError``
    naming the variable (never its value, which may be a secret).
    """
    from server.errors import ConfigurationError

    source = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        key = ENV_PREFIX + name.upper()
        if key in source:
            raw[name] = source[key]
    raw.update(overrides)
    if "public_base_url" not in raw and ("host" in raw or "port" in raw):
        defaults = Settings()
        raw["public_base_url"] = f"http://{raw.get('host', defaults.host)}:{raw.get('port', defaults.port)}"
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("$.", 1)[-1].rstrip("`").strip()
        raise ConfigurationError(f"invalid setting {ENV_PREFIX}{field.upper()}: {str(exc).split(' - ')[0]}") from None
