"""De-identifying FHIR Bundles per HIPAA Safe Harbor, with a policy in the FHIR anonymizer's style.

A ``DeidPolicy`` maps element paths (``Patient.name``, ``*.identifier``) to a method:

- ``redact``     remove the element;
- ``pseudonym``  replace identifiers, ids and references with a keyed HMAC (same input, same
                 pseudonym, in every output of this deployment: de-identified data stays linkable);
- ``dateshift``  move every date by the patient's own offset (derived from the same secret, so
                 intervals between dates are preserved and stable across calls);
- ``generalize`` addresses keep state and country and a 3-digit ZIP (000 for the sparsely
                 populated prefixes of Safe Harbor's census rule); birth dates of patients over 89
                 are removed (Safe Harbor aggregates ages 90 and over);
- ``scrub``      free text: known PHI values and PHI-shaped patterns replaced (``server.deid.text``);
- ``keep``       leave it.

Elements no rule names are walked: date-shaped strings are shifted and every other string has
the known PHI values removed, so a name copied into, say, ``code.text`` does not leak.
Every resource leaves labelled ``PSEUDED`` (HL7 v3 ObservationValue) in ``meta.security``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec

from server.deid.text import scrub_text

Method = Literal["redact", "pseudonym", "dateshift", "generalize", "scrub", "keep"]
PSEUDONYMIZED: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}
PSEUDONYM_SYSTEM: Final = "urn:paperchart:pseudonym"
# Safe Harbor: 3-digit ZIP prefixes with 20,000 or fewer people (2000 census) become 000
RESTRICTED_ZIP3: Final = frozenset(
    [
        "036",
        "059",
        "063",
        "102",
        "203",
        "556",
        "692",
        "790",
        "821",
        "823",
        "830",
        "831",
        "878",
        "879",
        "884",
        "890",
        "893",
    ]
)
_DATE: Final = re.compile(r"^(\d{4})(-(\d{2})(-(\d{2})(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_NOT_DATES: Final = frozenset({"id", "reference", "system", "url", "code", "version", "value", "div", "valueString"})


class DeidPolicy(msgspec.Struct, frozen=True, kw_only=True):
    rules: tuple[tuple[str, Method], ...]

    def method_for(self, resource_type: str, element: str) -> Method | None:
        for path, method in self.rules:
            scope, _, name = path.partition(".")
            if name == element and scope in ("*", resource_type):
                return method
        return None


SAFE_HARBOR: Final = DeidPolicy(
    rules=(
        ("Patient.name", "redact"),
        ("Patient.telecom", "redact"),
        ("Patient.photo", "redact"),
        ("Patient.contact", "redact"),
        ("Patient.link", "redact"),
        ("Patient.generalPractitioner", "redact"),
        ("Patient.managingOrganization", "redact"),
        ("Patient.address", "generalize"),
        ("Patient.birthDate", "generalize"),
        ("*.identifier", "pseudonym"),
        ("*.masterIdentifier", "pseudonym"),
        ("*.id", "pseudonym"),
        ("Encounter.participant", "redact"),
        ("Encounter.serviceProvider", "redact"),
        ("DocumentReference.author", "redact"),
        ("DocumentReference.authenticator", "redact"),
        ("DocumentReference.custodian", "redact"),
        ("DocumentReference.content", "redact"),  # the attachment is the document itself
        ("*.text", "scrub"),
        ("*.note", "scrub"),
        ("*.description", "scrub"),
        ("*.gender", "keep"),
        ("*.status", "keep"),
    )
)


class Deidentifier:
    """Applies a policy with one deployment secret (pseudonyms and date shifts come from it)."""

    def __init__(self, secret: bytes, policy: DeidPolicy = SAFE_HARBOR, today: dt.date | None = None) -> None:
        self._secret = secret
        self._policy = policy
        self._today = today or dt.date.today()

    def pseudonym(self, kind: str, value: str) -> str:
        digest = hmac.new(self._secret, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
        return digest[:32]

    def shift_days(self, patient_key: str) -> int:
        """A per-patient offset of 1 to 365 days, back or forward; never 0 (that would shift nothing)."""
        digest = hmac.new(self._secret, f"dateshift\x00{patient_key}".encode(), hashlib.sha256).digest()
        offset = int.from_bytes(digest[:4], "big") % 730 - 365
        return offset if offset < 0 else offset + 1

    @staticmethod
    def patient_key(patient: dict[str, Any] | None) -> str:
        """Who the patient is across documents: their first identifier, else their id."""
        if patient is None:
            return "no-patient"
        identifiers = sorted(
            f"{i.get('system', '')}|{i['value']}" for i in patient.get("identifier", []) if i.get("value")
        )
        return identifiers[0] if identifiers else f"Patient/{patient.get('id', '')}"

    def known_phi(self, bundle: dict[str, Any]) -> list[str]:
        """The PHI values the Bundle itself reveals (used to scrub free text and to check outputs)."""
        values: list[str] = []
        for entry in bundle.get("entry", []):
            resource = entry.get("resource", {})
            if resource.get("resourceType") != "Patient":
                continue
            for name in resource.get("name", []):
                values.extend([name.get("text", ""), name.get("family", ""), *name.get("given", [])])
            values.extend(i.get("value", "") for i in resource.get("identifier", []))
            values.extend(t.get("value", "") for t in resource.get("telecom", []))
            values.append(resource.get("birthDate", ""))
            for address in resource.get("address", []):
                values.extend([*address.get("line", []), address.get("city", ""), address.get("postalCode", "")])
                text = address.get("text", "")  # as written on the page: the whole and each part
                values.extend([text, *(part.strip() for part in text.split(","))])
        return [v for v in values if v and len(v) >= 2]

    def bundle(
        self, bundle: dict[str, Any], extra_phi: Iterable[str] = (), issued: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A de-identified copy of a Bundle (the input is not changed).

        ``issued`` receives each pseudonym used and what it stands for, so an authorized,
        audited re-identification can reverse it later.
        """
        patient = next(
            (e["resource"] for e in bundle.get("entry", []) if e.get("resource", {}).get("resourceType") == "Patient"),
            None,
        )
        context = _Context(
            owner=self,
            shift=self.shift_days(self.patient_key(patient)),
            known=[*self.known_phi(bundle), *extra_phi],
        )
        out = context.resource(bundle)
        out["entry"] = [
            {
                **({"fullUrl": context.reference(e["fullUrl"])} if e.get("fullUrl") else {}),
                "resource": context.resource(e["resource"]),
            }
            for e in bundle.get("entry", [])
        ]
        if issued is not None:
            issued.update(context.issued)
        return out


class _Context:
    def __init__(self, owner: Deidentifier, shift: int, known: list[str]) -> None:
        self.owner = owner
        self.shift = shift
        self.known = known
        self.issued: dict[str, str] = {}  # pseudonym -> what it stands for (kept for re-identification)

    def pseudonym(self, kind: str, value: str) -> str:
        pseudonym = self.owner.pseudonym(kind, value)
        self.issued[pseudonym] = f"{kind}/{value}" if kind not in ("identifier", "urn", "reference") else value
        return pseudonym

    def reference(self, reference: str) -> str:
        """``Type/id`` (or an absolute URL ending in it) with the id pseudonymized."""
        if reference.startswith(("urn:uuid:", "urn:oid:")):
            return "urn:uuid:" + _as_uuid(self.pseudonym("urn", reference))
        parts = reference.rstrip("/").split("/")
        if len(parts) >= 2:
            kind, id_ = parts[-2], parts[-1]
            return f"{kind}/{self.pseudonym(kind, id_)}"
        return self.pseudonym("reference", reference)

    def resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        kind = str(resource.get("resourceType", ""))
        out: dict[str, Any] = {}
        for element, value in resource.items():
            if element in ("resourceType", "entry"):
                if element == "resourceType":
                    out[element] = value
                continue
            method = self.owner._policy.method_for(kind, element)
            if element == "meta":
                out["meta"] = self.meta(value)
            elif method == "redact":
                continue
            elif method == "keep":
                out[element] = value
            elif method == "pseudonym":
                out[element] = self.pseudonymize(kind, element, value)
            elif method == "generalize":
                generalized = self.generalize(kind, element, value)
                if generalized is not None:
                    out[element] = generalized
            elif method == "scrub":
                out[element] = self.walk(value, element, scrub=True)
            else:
                out[element] = self.walk(value, element)
        if "meta" not in out:
            out["meta"] = self.meta({})
        return out

    def meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in meta.items() if k in ("tag", "profile", "security")}
        security = [s for s in kept.get("security", []) if s.get("code") != PSEUDONYMIZED["code"]]
        return {**kept, "security": [*security, dict(PSEUDONYMIZED)]}

    def pseudonymize(self, kind: str, element: str, value: Any) -> Any:
        if element == "id":
            return self.pseudonym(kind, str(value))
        identifiers = value if isinstance(value, list) else [value]
        pseudonyms = [
            {
                "system": PSEUDONYM_SYSTEM,
                "value": self.pseudonym("identifier", f"{i.get('system', '')}|{i.get('value', '')}"),
            }
            for i in identifiers
            if isinstance(i, dict) and i.get("value")
        ]
        return pseudonyms if isinstance(value, list) else (pseudonyms[0] if pseudonyms else None)

    def generalize(self, kind: str, element: str, value: Any) -> Any:
        if element == "birthDate" and isinstance(value, str):
            year = int(value[:4])
            if self.owner._today.year - year > 89:
                return None  # Safe Harbor: ages over 89 are aggregated; the birth date must go
            return self.date(value)
        if element == "address" and isinstance(value, list):
            return [a for a in (self.address(address) for address in value) if a]
        return None

    @staticmethod
    def address(address: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {k: address[k] for k in ("state", "country") if k in address}
        postal = str(address.get("postalCode", ""))
        if re.fullmatch(r"\d{5}(-\d{4})?", postal):
            out["postalCode"] = "000" if postal[:3] in RESTRICTED_ZIP3 else postal[:3]
        return out or None

    def date(self, value: str) -> str:
        match = _DATE.match(value)
        if match is None:
            return value
        year, month, day, time = match.group(1), match.group(3), match.group(5), match.group(6)
        if day is None:  # year or year-month: shift the first day and keep the precision
            anchor = dt.date(int(year), int(month or 1), 1) + dt.timedelta(days=self.shift)
            return f"{anchor.year:04d}" if month is None else f"{anchor.year:04d}-{anchor.month:02d}"
        shifted = dt.date(int(year), int(month), int(day)) + dt.timedelta(days=self.shift)
        return shifted.isoformat() + (time or "")

    def walk(self, value: Any, key: str, *, scrub: bool = False) -> Any:
        if isinstance(value, dict):
            return {k: self.walk(v, k, scrub=scrub) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, key, scrub=scrub) for v in value]
        if not isinstance(value, str):
            return value
        if key == "reference":
            return self.reference(value)
        if key not in _NOT_DATES and _DATE.match(value) and "-" in value:
            return self.date(value)
        if scrub or key in ("div", "valueString", "text", "display"):
            return scrub_text(value, self.known)
        return scrub_text(value, self.known) if any(k.lower() in value.lower() for k in self.known) else value


def _as_uuid(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:32]}"
