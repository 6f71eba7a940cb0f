"""The services one paperchart process builds once (in the app lifespan) and injects everywhere."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from server.auth import AuthRegistry, TokenService
from server.auth.tokens import load_external_issuer
from server.config import Settings
from server.crypto import KeyProvider, LocalKeyProvider, decode_master_key
from server.deid import Deidentifier
from server.errors import ConfigurationError
from server.hl7 import Batches, Hl7Service, MllpServer, tls_context
from server.jobs import JobRunner
from server.pipeline import Pipeline, create_code_chooser, create_extractor, create_ocr_engine
from server.store import SqliteStore, Store
from server.store.audit import AuditLog
from terminology import TerminologyService
from terminology.embed import (
    Embedder,
    EmbeddingDeviceError,
    EmbeddingModelError,
    MiniLmEmbedder,
    SentenceTransformerEmbedder,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AuthServices:
    registry: AuthRegistry
    tokens: TokenService


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    store: Store
    pipeline: Pipeline
    jobs: JobRunner
    terminology: TerminologyService | None
    hl7: Hl7Service
    auth: AuthServices
    audit: AuditLog
    deid: Deidentifier


def build_key_provider(settings: Settings) -> KeyProvider:
    """The master key: ``PAPERCHART_MASTER_KEY`` when set, else the keyring file (created if missing)."""
    if settings.master_key:
        return LocalKeyProvider.from_key(decode_master_key(settings.master_key))
    return LocalKeyProvider.from_file(settings.master_key_path)


def build_auth(settings: Settings, keys: KeyProvider) -> AuthServices:
    registry = AuthRegistry(settings.database_path, keys)
    external = load_external_issuer(
        settings.external_issuer,
        settings.external_jwks_url,
        settings.external_jwks_file,
        settings.external_audience or settings.fhir_base_url,
    )
    tokens = TokenService(
        registry,
        issuer=settings.issuer,
        audience=settings.fhir_base_url,
        token_endpoint=f"{settings.auth_base_url}/token",
        lifetime_seconds=settings.access_token_lifetime_seconds,
        external=external,
    )
    from server.auth.session import REVIEW_CLIENT_ID, REVIEW_SCOPES

    # the review page is a SMART app of this server; its redirect follows the public base URL
    registry.ensure_client(
        client_id=REVIEW_CLIENT_ID,
        name="paperchart review page",
        kind="public",
        scopes=REVIEW_SCOPES,
        redirect_uris=[f"{settings.public_base_url.rstrip('/')}/review/callback"],
    )
    return AuthServices(registry=registry, tokens=tokens)


def build_embedder(settings: Settings) -> Embedder | None:
    """The configured embedding model (the built-in MiniLM unless ``embedding_model`` names a folder)."""
    if not settings.semantic_search:
        return None
    device = settings.embedding_device
    try:
        if settings.embedding_model is None:
            return MiniLmEmbedder(settings.model_cache_dir, device=device)
        return SentenceTransformerEmbedder(settings.embedding_model, device=device)
    except EmbeddingDeviceError as exc:
        raise ConfigurationError(f"PAPERCHART_EMBEDDING_DEVICE: {exc}") from None
    except EmbeddingModelError as exc:
        raise ConfigurationError(f"PAPERCHART_EMBEDDING_MODEL: {exc}") from None


def build_terminology(settings: Settings) -> TerminologyService | None:
    """The terminology service, or None (with a warning) when no index has been built yet."""
    path = settings.terminology_index_path
    if not path.exists():
        logger.warning(
            "no terminology index at %s: codes will not be assigned (run: paperchart terminology build)", path
        )
        return None
    try:
        return TerminologyService(path, build_embedder(settings))
    except EmbeddingModelError as exc:
        raise ConfigurationError(f"{exc}: rebuild it (paperchart terminology build)") from None


def build_pipeline(settings: Settings, terminology: TerminologyService | None = None) -> Pipeline:
    return Pipeline(
        settings,
        create_ocr_engine(settings),
        create_extractor(settings),
        terminology,
        code_chooser=create_code_chooser(settings),
    )


def build_store(settings: Settings, keys: KeyProvider | None = None) -> SqliteStore:
    return SqliteStore(
        settings.database_path,
        keys or build_key_provider(settings),
        hl7_results=settings.hl7_outbound_host is not None,  # results owed back over HL7
    )


def build_mllp(settings: Settings, hl7: Hl7Service, jobs: JobRunner, audit: AuditLog) -> MllpServer:
    """The MLLP listener, handing messages to the HL7 service off the event loop, in batches.

    ``audit`` must work through the store's database: each message's audit record is committed
    in the transaction that stores the message.
    """
    from server.hl7.service import Receipt
    from server.store.audit import AuditRecord, now_instant

    store: object = hl7.store
    if audit.database is not store:
        raise ConfigurationError("the MLLP listener's audit log must share the store's database")

    def record(code: str) -> int:
        outcome = {"AA": 0, "AE": 4}.get(code, 8)
        return audit.append(
            AuditRecord(
                recorded=now_instant(), channel="mllp", action="C", interaction="hl7v2:receive", outcome=outcome
            )
        )

    def receive(payloads: list[bytes]) -> list[Receipt]:
        # durable, each with its audit record, before any ACK leaves
        return hl7.receive_many(payloads, audit=record)

    batches = Batches(receive)

    async def handle(payload: bytes) -> bytes | None:
        receipt = await batches(payload)
        if receipt.queued:
            jobs.submit()
        return receipt.ack.encode("utf-8") if receipt.ack is not None else None

    context = None
    if settings.mllp_tls_cert is not None and settings.mllp_tls_key is not None:
        context = tls_context(settings.mllp_tls_cert, settings.mllp_tls_key, settings.mllp_tls_client_ca)
    return MllpServer(
        handle,
        host=settings.mllp_host,
        port=settings.mllp_port,
        max_message_bytes=settings.mllp_max_message_bytes,
        idle_timeout=settings.mllp_idle_timeout_seconds,
        ssl_context=context,
    )


def build_services(settings: Settings) -> Services:
    """Every service of one process, built once; the caller starts ``jobs`` and closes them all."""
    keys = build_key_provider(settings)
    store = build_store(settings, keys)
    terminology = build_terminology(settings)
    pipeline = build_pipeline(settings, terminology)
    return Services(
        settings=settings,
        store=store,
        pipeline=pipeline,
        jobs=JobRunner(settings, store, pipeline),
        terminology=terminology,
        hl7=Hl7Service(settings, store, pipeline),
        auth=build_auth(settings, keys),
        audit=AuditLog(store),  # the store's connection: records commit with what they describe
        deid=Deidentifier(store.deployment_secret("deid")),
    )


def close_services(services: Services) -> None:
    services.store.close()
    services.auth.registry.close()
    services.audit.close()
    if services.terminology is not None:
        services.terminology.close()
