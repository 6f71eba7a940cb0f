"""HL7 v2 → FHIR R4, following the HL7 V2-to-FHIR IG (segment maps PID→Patient, PV1→Encounter,
TXA→DocumentReference, OBX→attachment).

Only what paperchart needs to ingest a document is mapped; every resource is validated.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any, Final, Literal

import msgspec

from fhir_profiles import FhirValidationError, validate_resource
from server.hl7.er7 import Er7Error, Er7Message, Segment

NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
ASSIGNER_SYSTEM_BASE: Final = "http://paperchart.org/fhir/NamingSystem/hl7-assigning-authority/"
DOCUMENT_NUMBER_SYSTEM_BASE: Final = "http://paperchart.org/fhir/NamingSystem/hl7-document-number/"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0270: Final = "http://terminology.hl7.org/CodeSystem/v2-0270"
ID_NAMESPACE: Final = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")

# HL7 Table 0001 administrative sex -> FHIR administrative-gender (V2-to-FHIR ConceptMap)
_SEX: Final = {"M": "male", "F": "female", "O": "other", "A": "other", "N": "unknown", "U": "unknown"}
# PV1-2 patient class -> v3 ActCode (V2-to-FHIR ConceptMap "PatientClass")
_CLASS: Final = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
}
# TXA-17 completion status (Table 0271) -> DocumentReference.docStatus
_DOC_STATUS: Final = {
    "AU": "final",
    "LA": "final",
    "DI": "preliminary",
    "DO": "preliminary",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
}
# ED type^subtype (HL7 Table 0191 / 0291) -> MIME type
_ED_TYPES: Final = {
    ("application", "pdf"): "application/pdf",
    ("ap", "pdf"): "application/pdf",
    ("image", "tiff"): "image/tiff",
    ("im", "tiff"): "image/tiff",
    ("image", "tif"): "image/tiff",
    ("image", "png"): "image/png",
    ("im", "png"): "image/png",
    ("image", "jpeg"): "image/jpeg",
    ("im", "jpeg"): "image/jpeg",
    ("image", "jpg"): "image/jpeg",
    ("text", "plain"): "text/plain",
    ("tx", "plain"): "text/plain",
}

Action = Literal["create", "status", "append", "replace", "edit", "cancel", "notify"]
# MDM trigger events (HL7 v2.5.1 §9.6) -> what happens to the document
MDM_ACTIONS: Final[dict[str, Action]] = {
    "T01": "notify",
    "T02": "create",
    "T03": "notify",
    "T04": "status",
    "T05": "notify",
    "T06": "append",
    "T07": "notify",
    "T08": "edit",
    "T09": "notify",
    "T10": "replace",
    "T11": "cancel",
}


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    content: bytes
    content_type: str


class DocumentPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one HL7 message asks paperchart to do."""

    action: Action
    patient: dict[str, Any]
    encounter: dict[str, Any] | None
    document: dict[str, Any]  # the DocumentReference (without attachment data)
    attachment: Attachment | None
    document_number: str | None  # TXA-12, the document's unique number
    parent_number: str | None  # TXA-13, the document this one appends to or replaces


def _validated(resource: dict[str, Any], segment: str) -> dict[str, Any]:
    try:
        validate_resource(resource)
    except FhirValidationError as exc:
        raise Er7Error(
            f"{segment} does not map to valid FHIR ({'; '.join(exc.problems)})", code="102", location=segment
        ) from None
    return resource


def _hl7_date(value: str) -> str | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS]]]]][+ZZZZ]) -> FHIR date or dateTime."""
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?)?([+-]\d{4})?", value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    if not (month and day) or not hour:
        return "-".join(p for p in (year, month, day) if p)
    offset = f"{zone[:3]}:{zone[3:]}" if zone else "Z"
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{offset}"


def _identifier(segment: Segment, field: int, repetition: int) -> dict[str, Any] | None:
    parts = segment.components(field, repetition)
    if not parts or not parts[0]:
        return None
    value = parts[0]
    authority = parts[3].split(segment.encoding.subcomponent)[0] if len(parts) > 3 else ""
    type_code = parts[4] if len(parts) > 4 else ""
    identifier: dict[str, Any] = {"value": value}
    if authority.upper() == "NHS" or type_code == "NH":
        identifier["system"] = NHS_NUMBER_SYSTEM
    elif authority:
        identifier["system"] = ASSIGNER_SYSTEM_BASE + re.sub(r"[^A-Za-z0-9.\-]", "-", authority)
        identifier["assigner"] = {"display": authority}
    if type_code:
        identifier["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return identifier


def patient_from_pid(pid: Segment) -> dict[str, Any]:
    identifiers = [i for r in range(len(pid.repetitions(3))) if (i := _identifier(pid, 3, r))]
    if not identifiers:
        raise Er7Error("PID-3 patient identifier is required", code="101", location="PID^1^3")
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers}
    names = []
    for r in range(len(pid.repetitions(5))):
        parts = pid.components(5, r) + [""] * 6
        family, given, middle, suffix, prefix = parts[0], parts[1], parts[2], parts[3], parts[4]
        if not (family or given):
            continue
        name: dict[str, Any] = {"use": "official"}
        if family:
            name["family"] = family.split(pid.encoding.subcomponent)[0]
        if given or middle:
            name["given"] = [g for g in (given, middle) if g]
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        names.append(name)
    if names:
        patient["name"] = names
    if birth := _hl7_date(pid.value(7)):
        patient["birthDate"] = birth[:10]
    if sex := _SEX.get(pid.value(8).upper()):
        patient["gender"] = sex
    addresses = []
    for r in range(len(pid.repetitions(11))):
        parts = pid.components(11, r) + [""] * 6
        if not any(parts[:6]):
            continue
        address: dict[str, Any] = {}
        lines = [p for p in parts[:2] if p]
        if lines:
            address["line"] = lines
        for key, value in (("city", parts[2]), ("state", parts[3]), ("postalCode", parts[4]), ("country", parts[5])):
            if value:
                address[key] = value
        addresses.append(address)
    if addresses:
        patient["address"] = addresses
    phones = []
    for r in range(len(pid.repetitions(13))):
        parts = pid.components(13, r) + [""] * 12
        number = parts[0] or parts[11]
        if number:
            phones.append({"system": "phone", "value": number, "use": "home"})
    if phones:
        patient["telecom"] = phones
    # the same identifier always yields the same Patient id: resends update, never duplicate
    first = identifiers[0]
    patient["id"] = str(uuid.uuid5(ID_NAMESPACE, f"Patient|{first.get('system', '')}|{first['value']}"))
    return _validated(patient, "PID")


def encounter_from_pv1(pv1: Segment, patient_id: str) -> dict[str, Any] | None:
    code, display = _CLASS.get(pv1.value(2).upper(), ("", ""))
    visit = pv1.value(19)
    if not code and not visit:
        return None
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "finished" if pv1.value(45) else "in-progress",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": code or "AMB",
            "display": display or "ambulatory",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if visit:
        encounter["identifier"] = [{"value": visit}]
    attending = pv1.components(7)
    if attending and (len(attending) > 1 and attending[1]):
        encounter["participant"] = [
            {"individual": {"display": " ".join(p for p in (attending[2:3] + attending[1:2]) if p)}}
        ]
    key = visit or f"{patient_id}|{pv1.raw(3)}"
    encounter["id"] = str(uuid.uuid5(ID_NAMESPACE, f"Encounter|{key}"))
    return _validated(encounter, "PV1")


def _attachment(message: Er7Message) -> Attachment | None:
    """OBX-5 ED content (base64 PDF/TIFF/image), else OBX TX/FT/ST lines as text/plain."""
    text_lines: list[str] = []
    for index, obx in enumerate(message.all("OBX"), start=1):
        value_type = obx.value(2).upper()
        if value_type == "ED":
            parts = obx.components(5)
            if len(parts) < 5:
                raise Er7Error(
                    "OBX-5 ED must have source^type^subtype^encoding^data", code="102", location=f"OBX^{index}^5"
                )
            kind, subtype, encoding, data = parts[1].lower(), parts[2].lower(), parts[3].lower(), parts[4]
            content_type = _ED_TYPES.get((kind, subtype))
            if content_type is None:
                raise Er7Error(
                    "OBX-5 ED type/subtype is not a document type paperchart reads",
                    code="103",
                    location=f"OBX^{index}^5^2",
                )
            if encoding == "base64":
                try:
                    # line breaks some senders wrap base64 with go; the whitespace scan is skipped
                    # when there is none (it costs milliseconds on a 10 MB document)
                    if any(c in data for c in " \t\r\n"):
                        data = "".join(data.split())
                    content = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    raise Er7Error(
                        "OBX-5 ED data is not valid base64", code="102", location=f"OBX^{index}^5^5"
                    ) from None
            elif encoding == "hex":
                try:
                    content = bytes.fromhex(data)
                except ValueError:
                    raise Er7Error("OBX-5 ED data is not valid hex", code="102", location=f"OBX^{index}^5^5") from None
            elif encoding in ("a", ""):
                content = data.encode("utf-8")
            else:
                raise Er7Error("OBX-5 ED encoding must be Base64, Hex or A", code="103", location=f"OBX^{index}^5^4")
            if not content:
                raise Er7Error("OBX-5 ED data is empty", code="101", location=f"OBX^{index}^5^5")
            return Attachment(content=content, content_type=content_type)
        if value_type in ("TX", "FT", "ST"):
            text_lines.append(obx.text(5))
    if text_lines:
        return Attachment(content="\n".join(text_lines).encode("utf-8"), content_type="text/plain")
    return None


def _document_number(segment: Segment, field: int) -> str | None:
    parts = segment.components(field)
    if not parts or not parts[0]:
        return None
    return parts[0] + (f"^{parts[1]}" if len(parts) > 1 and parts[1] else "")


def plan_message(message: Er7Message) -> DocumentPlan:
    """Map an MDM^T01-T11 or ORU^R01 message to the document action it asks for."""
    message_type, event = message.message_type
    if message_type == "MDM":
        action = MDM_ACTIONS.get(event)
        if action is None:
            raise Er7Error(f"MDM event {event or '(none)'} is not supported", code="201", location="MSH^1^9^2")
    elif message_type == "ORU" and event == "R01":
        action = "create"
    else:
        raise Er7Error(f"message type {message_type}^{event} is not supported", code="200", location="MSH^1^9")
    pid = message.first("PID")
    if pid is None:
        raise Er7Error("PID segment is required", code="100", location="PID")
    patient = patient_from_pid(pid)
    pv1 = message.first("PV1")
    encounter = encounter_from_pv1(pv1, patient["id"]) if pv1 is not None else None
    txa = message.first("TXA")
    if message_type == "MDM" and txa is None:
        raise Er7Error("TXA segment is required in MDM messages", code="100", location="TXA")
    attachment = _attachment(message)
    if action in ("create", "append", "replace", "edit") and attachment is None:
        raise Er7Error("the message has no document content (OBX-5)", code="101", location="OBX^1^5")

    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": f"Patient/{patient['id']}"},
    }
    number = parent = None
    sender = message.msh.value(4) or message.msh.value(3)
    if txa is not None:
        doc_type = txa.components(2)
        if doc_type and doc_type[0]:
            document["type"] = {
                "coding": [{"system": V2_0270, "code": doc_type[0]}],
                "text": doc_type[1] if len(doc_type) > 1 and doc_type[1] else doc_type[0],
            }
        if doc_status := _DOC_STATUS.get(txa.value(17).upper()):
            document["docStatus"] = doc_status
        if txa.value(19).upper() == "CA":
            document["status"] = "entered-in-error"
        elif txa.value(19).upper() == "OB":
            document["status"] = "superseded"
        when = _hl7_date(txa.value(4)) or _hl7_date(txa.value(6))
        if when and "T" in when:  # DocumentReference.date is an instant
            document["date"] = when
        authors = [txa.components(5, r) for r in range(len(txa.repetitions(5)))] + [txa.components(9)]
        names = [" ".join(p for p in (a[2:3] + a[1:2]) if p) for a in authors if len(a) > 1 and a[1]]
        if names:
            document["author"] = [{"display": n} for n in dict.fromkeys(names)]
        number = _document_number(txa, 12)
        parent = _document_number(txa, 13)
        if number:
            document["masterIdentifier"] = {
                "system": DOCUMENT_NUMBER_SYSTEM_BASE + re.sub(r"[^A-Za-z0-9.\-]", "-", sender or "unknown"),
                "value": number,
            }
    elif message_type == "ORU":
        obr = message.first("OBR")
        code = obr.components(4) if obr is not None else []
        if code and code[0]:
            document["type"] = {"text": code[1] if len(code) > 1 and code[1] else code[0]}
        filler = obr.value(3) if obr is not None else ""
        if filler:
            number = filler
            document["masterIdentifier"] = {
                "system": DOCUMENT_NUMBER_SYSTEM_BASE + re.sub(r"[^A-Za-z0-9.\-]", "-", sender or "unknown"),
                "value": filler,
            }
    if encounter is not None:
        document["context"] = {"encounter": [{"reference": f"Encounter/{encounter['id']}"}]}
    content_type = attachment.content_type if attachment else "application/octet-stream"
    document["content"] = [{"attachment": {"contentType": content_type}}]
    return DocumentPlan(
        action=action,
        patient=patient,
        encounter=encounter,
        document=document,
        attachment=attachment,
        document_number=number,
        parent_number=parent,
    )
