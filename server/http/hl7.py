"""``POST /hl7/v2``: an HL7 v2 message in the body (ER7), its ACK in the response body."""

from __future__ import annotations

from typing import Any, Final

import anyio.to_thread
from litestar import Request, Response, post
from litestar.di import NamedDependency

from server.auth import Caller, needs
from server.errors import UnsupportedMediaType
from server.services import Services

HL7_ER7: Final = "x-application/hl7-v2+er7"
_ACCEPTED: Final = frozenset({HL7_ER7, "application/hl7-v2", "application/hl7-v2+er7", "text/plain"})


@post("/hl7/v2", status_code=200, opt=needs("DocumentReference", "c", contexts=("system",)))
async def receive_hl7(
    request: Request[Any, Any, Any], services: NamedDependency[Services], caller: NamedDependency[Caller]
) -> Response[bytes]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _ACCEPTED:
        raise UnsupportedMediaType(f"send HL7 v2 messages as {HL7_ER7} (or text/plain)")
    body = await request.body()
    receipt = await anyio.to_thread.run_sync(services.hl7.receive, body)
    if receipt.queued:
        services.jobs.submit()
    ack = receipt.ack
    if ack is None:  # enhanced mode, and the sender asked for no accept acknowledgement
        return Response(content=b"", status_code=204)
    return Response(content=ack.encode("utf-8"), media_type=HL7_ER7)
