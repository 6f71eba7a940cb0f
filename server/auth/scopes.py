"""SMART on FHIR scopes, v1 and v2, parsed once into permissions that every route checks.

Grammar (SMART App Launch 2.x §"Scopes for requesting clinical data"):

    v2:  (patient|user|system)/(ResourceType|*).[c][r][u][d][s][?param=value&...]
    v1:  (patient|user|system)/(ResourceType|*).(read|write|*)

v1 ``read`` means v2 ``rs``, ``write`` means ``cud``, ``*`` means ``cruds``. A v2 scope lists its
letters in the order c, r, u, d, s; anything else is malformed and grants nothing. Query
constraints (``patient/Observation.rs?category=laboratory``) narrow a permission to resources
that match every parameter; a parameter we cannot evaluate grants nothing (fail closed).

``patient/`` permissions reach only the launch patient's compartment; ``user/`` and ``system/``
permissions reach every resource of the type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlencode

import msgspec

Context = Literal["patient", "user", "system"]
Interaction = Literal["c", "r", "u", "d", "s"]

_RESOURCE_SCOPE: Final = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<access>[a-z*]+)(?:\?(?P<query>.+))?$"
)
_V2_ORDER: Final = "cruds"
_V1_ACCESS: Final[Mapping[str, str]] = {"read": "rs", "write": "cud", "*": "cruds"}

# search parameter -> element of the resource it constrains (token parameters only)
_CONSTRAINABLE: Final[Mapping[str, str]] = {
    "category": "category",
    "code": "code",
    "status": "status",
    "clinical-status": "clinicalStatus",
    "verification-status": "verificationStatus",
    "type": "type",
    "_security": "meta.security",  # security labels, e.g. PSEUDED on de-identified output
}


class ScopeError(ValueError):
    """A resource scope that does not follow the SMART grammar."""


class Permission(msgspec.Struct, frozen=True, kw_only=True):
    context: Context
    resource_type: str  # a FHIR type or "*"
    interactions: frozenset[str]
    constraints: tuple[tuple[str, str], ...] = ()

    @property
    def pseudonymized_only(self) -> bool:
        """Constrained to security-labelled (de-identified) output: never reaches identified data."""
        return any(name == "_security" for name, _ in self.constraints)

    def covers(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions and self.resource_type in ("*", resource_type)

    def within(self, other: Permission) -> bool:
        """Whether ``other`` already grants everything this permission does (so it may be issued)."""
        context_ok = other.context == self.context or (self.context == "patient" and other.context == "user")
        return (
            context_ok
            and other.resource_type in ("*", self.resource_type)
            and self.interactions <= other.interactions
            and set(other.constraints) <= set(self.constraints)
        )

    def matches(self, resource: Mapping[str, Any]) -> bool:
        """Whether the resource satisfies this permission's query constraints."""
        return all(_token_matches(resource, name, value) for name, value in self.constraints)


def parse_scope(scope: str) -> Permission | None:
    """The permission a resource scope grants; None for other scopes (``openid``, ``launch``...).

    Raises ``ScopeError`` for something that looks like a resource scope but is malformed.
    """
    if "/" not in scope or scope.startswith("launch/"):
        return None
    match = _RESOURCE_SCOPE.match(scope)
    if match is None:
        raise ScopeError(f"malformed scope: {scope!r}")
    access = match["access"]
    if access in _V1_ACCESS:
        letters = _V1_ACCESS[access]
    elif access and all(c in _V2_ORDER for c in access) and _in_v2_order(access):
        letters = access
    else:
        raise ScopeError(f"malformed scope access {access!r} in {scope!r}")
    constraints: tuple[tuple[str, str], ...] = ()
    if match["query"]:
        constraints = tuple(parse_qsl(match["query"], keep_blank_values=True, strict_parsing=False))
        if not constraints or any(not name or not value for name, value in constraints):
            raise ScopeError(f"malformed query constraint in {scope!r}")
    context: Context = match["context"]  # type: ignore[assignment]  # the regex allows only the three
    return Permission(
        context=context,
        resource_type=match["type"],
        interactions=frozenset(letters),
        constraints=constraints,
    )


def _in_v2_order(access: str) -> bool:
    positions = [_V2_ORDER.index(c) for c in access]
    return positions == sorted(set(positions))


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """What one token may do: its resource permissions, other scopes and launch context."""

    permissions: tuple[Permission, ...] = ()
    other: frozenset[str] = frozenset()  # openid, fhirUser, launch/patient, offline_access...
    patient: str | None = None  # launch context: the patient a patient/ permission is limited to

    @classmethod
    def from_scopes(cls, scopes: Iterable[str], *, patient: str | None = None) -> Grant:
        """Parse a token's scopes; malformed resource scopes grant nothing (they raise ``ScopeError``)."""
        permissions: list[Permission] = []
        other: set[str] = set()
        for scope in scopes:
            permission = parse_scope(scope)
            if permission is None:
                other.add(scope)
            else:
                permissions.append(permission)
        return cls(permissions=tuple(permissions), other=frozenset(other), patient=patient)

    def _usable(self, permission: Permission) -> bool:
        # a patient/ permission without a launch patient reaches nothing
        return permission.context != "patient" or self.patient is not None

    def may(
        self,
        resource_type: str,
        interaction: str,
        *,
        contexts: Iterable[Context] | None = None,
        identified: bool = False,
    ) -> bool:
        """Whether some permission allows the interaction on the type (before looking at a resource).

        ``identified``: only permissions that can reach identified data count (not ``_security=PSEUDED``).
        """
        allowed = set(contexts) if contexts is not None else None
        return any(
            p.covers(resource_type, interaction)
            and self._usable(p)
            and (allowed is None or p.context in allowed)
            and not (identified and p.pseudonymized_only)
            for p in self.permissions
        )

    def patient_only(self, resource_type: str, interaction: str) -> bool:
        """True when every permission for this interaction is a patient/ one (searches get the patient)."""
        covering = [p for p in self.permissions if p.covers(resource_type, interaction) and self._usable(p)]
        return bool(covering) and all(p.context == "patient" for p in covering)

    def permits(self, resource: Mapping[str, Any], interaction: str, patient_of: str | None) -> bool:
        """Whether the interaction is allowed on this resource, given the patient whose compartment it is in."""
        resource_type = str(resource.get("resourceType", ""))
        for permission in self.permissions:
            if not permission.covers(resource_type, interaction) or not self._usable(permission):
                continue
            if permission.context == "patient" and patient_of != self.patient:
                continue
            if permission.matches(resource):
                return True
        return False


def narrow(requested: Iterable[str], *allowed: Iterable[str]) -> list[str]:
    """What a token may be issued with: each requested scope cut down to what every ``allowed`` list grants.

    A resource scope that an allowed one fully covers is kept as it is (``system/*.rs`` covers
    ``system/Observation.rs``; a user's ``user/`` permission covers the same ``patient/`` one);
    otherwise it is narrowed to its overlap with each allowed scope (``user/*.cruds`` asked by a
    user allowed ``user/Observation.rs`` gives ``user/Observation.rs``), as SMART lets a server
    grant less than was asked. Other scopes (``openid``, ``launch/patient``) must appear literally.
    Malformed scopes are dropped.
    """
    granted: list[str] = []
    allowed_lists = [_parsed(a) for a in allowed]
    literal_lists = [set(a) for a in allowed]
    for scope in requested:
        try:
            permission = parse_scope(scope)
        except ScopeError:
            continue
        if permission is None:
            if all(scope in literals for literals in literal_lists):
                granted.append(scope)
            continue
        current = [permission]
        for permissions in allowed_lists:
            current = [kept for candidate in current for kept in _within_any(candidate, permissions)]
        for result in current:
            text = scope if result == permission else format_scope(result)
            if text not in granted:
                granted.append(text)
    return granted


def _within_any(candidate: Permission, permissions: list[Permission]) -> list[Permission]:
    """The candidate if some permission covers it, else its overlaps with each of them."""
    if any(candidate.within(other) for other in permissions):
        return [candidate]
    overlaps = (_overlap(candidate, other) for other in permissions)
    return [overlap for overlap in overlaps if overlap is not None]


def _parsed(scopes: Iterable[str]) -> list[Permission]:
    permissions = []
    for scope in scopes:
        try:
            permission = parse_scope(scope)
        except ScopeError:
            continue
        if permission is not None:
            permissions.append(permission)
    return permissions


def _overlap(wanted: Permission, allowed: Permission) -> Permission | None:
    """What both permissions grant, or None."""
    if not (allowed.context == wanted.context or (wanted.context == "patient" and allowed.context == "user")):
        return None
    if wanted.resource_type == allowed.resource_type or allowed.resource_type == "*":
        resource_type = wanted.resource_type
    elif wanted.resource_type == "*":
        resource_type = allowed.resource_type
    else:
        return None
    interactions = wanted.interactions & allowed.interactions
    if not interactions:
        return None
    constraints = tuple(dict.fromkeys((*wanted.constraints, *allowed.constraints)))
    return Permission(
        context=wanted.context, resource_type=resource_type, interactions=interactions, constraints=constraints
    )


def format_scope(permission: Permission) -> str:
    """The SMART v2 scope string of a permission (letters in c, r, u, d, s order)."""
    letters = "".join(c for c in _V2_ORDER if c in permission.interactions)
    text = f"{permission.context}/{permission.resource_type}.{letters}"
    if permission.constraints:
        text += "?" + urlencode(permission.constraints)
    return text


def _token_matches(resource: Mapping[str, Any], name: str, value: str) -> bool:
    """FHIR token search semantics for ``name=[system|]code`` on one element of the resource."""
    element = _CONSTRAINABLE.get(name)
    if element is None:
        return False  # a constraint we cannot evaluate must not widen access
    system, _, code = value.rpartition("|") if "|" in value else (None, "", value)
    target: Any = resource
    for step in element.split("."):
        target = target.get(step) if isinstance(target, Mapping) else None
    return any(
        code == candidate_code and (system is None or system == candidate_system)
        for candidate_system, candidate_code in _codes(target)
    )


def _codes(value: Any) -> Iterable[tuple[str | None, str]]:
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, list):
        for item in value:
            yield from _codes(item)
    elif isinstance(value, dict):
        if "coding" in value:
            yield from _codes(value["coding"])
        elif "code" in value:
            yield value.get("system"), str(value["code"])


__all__ = ["Context", "Grant", "Permission", "ScopeError", "format_scope", "narrow", "parse_scope"]
