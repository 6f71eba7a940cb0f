"""Who is calling: every handler receives a ``Caller`` from one Litestar dependency.

Authorization (SMART on FHIR tokens and scopes, issue 8) plugs in here: ``resolve_caller`` is
the single place a request's identity is established, so scope checks can be enforced in one
place. Until then every request is served as the local, unauthenticated operator, and the
server binds to loopback by default for that reason.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    scopes: frozenset[str] = frozenset()
    authenticated: bool = False


LOCAL_OPERATOR = Caller(subject="local-operator")


async def resolve_caller(request: Request[Any, Any, Any]) -> Caller:
    return LOCAL_OPERATOR


__all__ = ["LOCAL_OPERATOR", "Caller", "resolve_caller"]
