"""The MCP endpoint inside the Litestar app: streamable HTTP at ``/mcp``, with its OAuth metadata.

- ``/mcp`` forwards to the SDK's streamable-HTTP app once the bearer token checks out (audience:
  the MCP URL); otherwise ``401`` with ``WWW-Authenticate: Bearer resource_metadata=...`` pointing at
- ``/.well-known/oauth-protected-resource/mcp`` (RFC 9728), which names our SMART authorization
  server, so an MCP client can discover where to get a token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlparse

from litestar import Litestar, Response, asgi, get
from litestar.datastructures import State
from mcp.server.transport_security import TransportSecuritySettings

from mcp_tools.server import TOOL_ACCESS, CallerSource, build_mcp_server
from server.auth import PUBLIC, QUIET_PUBLIC
from server.errors import PaperchartError
from server.services import Services


def _metadata_path(settings_mcp_url: str) -> str:
    return "/.well-known/oauth-protected-resource" + urlparse(settings_mcp_url).path


def mcp_routes(
    services: Callable[[], Services], settings_mcp_url: str
) -> tuple[list[Any], Callable[[Litestar], AbstractAsyncContextManager[None]]]:
    """The route handlers to add to the app, and a lifespan that runs the MCP session manager."""
    source = CallerSource(services)
    server = build_mcp_server(source)
    parsed = urlparse(settings_mcp_url)
    hosts = sorted({parsed.netloc, "127.0.0.1:*", "localhost:*", "[::1]:*"})
    security = TransportSecuritySettings(
        allowed_hosts=hosts,
        allowed_origins=[f"{parsed.scheme}://{parsed.netloc}", "http://127.0.0.1:*", "http://localhost:*"],
    )
    starlette_app = server.streamable_http_app(streamable_http_path="/", transport_security=security)

    @get(_metadata_path(settings_mcp_url), opt=QUIET_PUBLIC)
    async def protected_resource_metadata(state: State) -> Response[dict[str, Any]]:
        settings = state.services.settings
        scopes = sorted({f"system/{kind}.{''.join(i)}" for kind, i, _ in TOOL_ACCESS.values()})
        return Response(
            {
                "resource": settings.mcp_url,
                "authorization_servers": [settings.issuer],
                "bearer_methods_supported": ["header"],
                "scopes_supported": [*scopes, "system/*.rs?_security=PSEUDED"],
                "resource_documentation": f"{settings.issuer}/fhir/metadata",
            },
            media_type="application/json",
        )

    # tokens are checked here (audience: the MCP URL), and each tool call is audited by the MCP middleware
    @asgi("/mcp", is_mount=True, copy_scope=True, opt=PUBLIC.as_opt() | {"audit": False})
    async def mcp_endpoint(scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            source.caller(headers)
        except PaperchartError as error:
            settings = services().settings
            metadata = settings.public_base_url.rstrip("/") + _metadata_path(settings.mcp_url)
            challenge = f'Bearer realm="paperchart", resource_metadata="{metadata}"'
            if headers.get("authorization"):
                challenge += ', error="invalid_token"'
            body = json.dumps({"error": "invalid_token", "error_description": error.message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", challenge.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await starlette_app(scope, receive, send)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    return [protected_resource_metadata, mcp_endpoint], lifespan
