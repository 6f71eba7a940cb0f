"""A stored ``collection`` Bundle → a ``transaction`` Bundle another FHIR server can load.

FHIR R4 §3.1.0.11 (transactions): every entry gets a ``urn:uuid`` fullUrl and a ``request``;
references between entries are rewritten to those urn:uuids so the receiving server links
them to the ids it assigns. The Patient is a conditional create (``ifNoneExist`` on its
identifier), so re-sending the same document does not create a second patient. The source
DocumentReference travels with the Bundle (its attachment pointing at our Binary) so every
Provenance.entity still resolves.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from fhir_profiles.validate import validate_resource

Resource = dict[str, Any]


def _rewrite(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (mapping.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, mapping))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v, mapping) for v in value]
    return value


def _if_none_exist(patient: Resource) -> str | None:
    for identifier in patient.get("identifier", []):
        if identifier.get("system") and identifier.get("value"):
            return f"identifier={identifier['system']}|{identifier['value']}"
    return None


def to_transaction(bundle: Resource, document_reference: Resource | None, binary_url: str | None) -> Resource:
    """The transaction form of ``bundle`` (validated); ids are left for the receiving server to assign."""
    resources = [copy.deepcopy(e["resource"]) for e in bundle.get("entry", [])]
    if document_reference is not None:
        document = copy.deepcopy(document_reference)
        if binary_url:
            document["content"][0]["attachment"]["url"] = binary_url
        resources.insert(0, document)
    mapping = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in resources}
    entries = []
    for resource in resources:
        full_url = mapping[f"{resource['resourceType']}/{resource['id']}"]
        body = _rewrite({k: v for k, v in resource.items() if k not in ("id", "meta")}, mapping)
        if "meta" in resource and resource["meta"].get("tag"):
            body["meta"] = {"tag": resource["meta"]["tag"]}
        request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
        if resource["resourceType"] == "Patient" and (condition := _if_none_exist(resource)):
            request["ifNoneExist"] = condition
        entries.append({"fullUrl": full_url, "resource": body, "request": request})
    transaction: Resource = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    for entry in entries:
        validate_resource(entry["resource"])
    validate_resource(transaction, deep=False)
    return transaction
