"""SMART on FHIR end to end: discovery, backend services, app launch with PKCE, scopes on every route.

Tokens come from the running app's own endpoints; client assertions are signed with real keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from litestar import Litestar
from litestar.testing import TestClient

from server.app import create_app
from server.auth import Access
from server.auth.assertion import JWT_BEARER, generate_client_key, sign_client_assertion, token_request
from tests.conftest import document_reference, rendered
from tests.smart import BackendClient, bearer, fetch_token, register_backend

REDIRECT = "http://127.0.0.1:9999/callback"
PASSWORD = "correct horse battery staple"
DOCUMENTS: list[tuple[Any, int]] = [("clinic_note", 11), ("lab_report", 12)]


class World:
    """One app with two extracted documents (two patients) and the ids a test needs."""

    def __init__(self, client: TestClient[Any], app: Litestar) -> None:
        self.client = client
        self.app = app
        self.admin = register_backend(app)
        self.admin_headers = bearer(fetch_token(client, self.admin))
        self.documents: list[str] = []
        self.bundles: list[dict[str, Any]] = []
        for kind, seed in DOCUMENTS:
            document = rendered(kind, seed=seed)
            created = client.post(
                "/fhir/DocumentReference",
                json=document_reference(document.pdf, "application/pdf"),
                headers=self.admin_headers,
            )
            assert created.status_code == 201
            self.documents.append(created.json()["id"])
            extracted = client.post(
                f"/fhir/DocumentReference/{created.json()['id']}/$extract",
                headers={**self.admin_headers, "Prefer": "respond-sync"},
            )
            assert extracted.status_code == 200, extracted.text
            self.bundles.append(extracted.json())
        self.patients = [self.first(b, "Patient")["id"] for b in self.bundles]
        self.truths = [rendered(kind, seed=seed).truth for kind, seed in DOCUMENTS]

    @staticmethod
    def first(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
        return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)

    def token(self, scopes: str) -> dict[str, str]:
        backend = register_backend(self.app, scopes)
        return bearer(fetch_token(self.client, backend, scopes))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from server.config import load_settings

    settings = load_settings({}, data_dir=tmp_path_factory.mktemp("auth"), mllp_enabled=False, semantic_search=False)
    app = create_app(settings)
    with TestClient(app=app) as client:
        yield World(client, app)


# --- discovery --------------------------------------------------------------------------------


def test_smart_configuration_has_every_required_field(world: World) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        config = world.client.get(path).json()
        for field in (
            "issuer",
            "jwks_uri",
            "authorization_endpoint",
            "token_endpoint",
            "grant_types_supported",
            "scopes_supported",
            "response_types_supported",
            "capabilities",
            "code_challenge_methods_supported",
            "token_endpoint_auth_methods_supported",
        ):
            assert config[field], field
        assert config["code_challenge_methods_supported"] == ["S256"]
        assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
        assert {"client_credentials", "authorization_code"} <= set(config["grant_types_supported"])
    metadata = world.client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == config["issuer"] and metadata["token_endpoint"] == config["token_endpoint"]
    keys = world.client.get("/.well-known/jwks.json").json()["keys"]
    assert keys and all("d" not in key and key["kid"] for key in keys)


def test_every_route_declares_an_access_rule(world: World) -> None:
    for route in world.app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.http_methods == {"OPTIONS"}:
                continue  # Litestar's automatic OPTIONS answer (no data; the guard refuses it anyway)
            assert isinstance(handler.opt.get("access"), Access), f"{route.path} has no access rule"


# --- backend services ----------------------------------------------------------------------------


def test_backend_client_uploads_and_reads_its_bundle_with_narrow_scopes(world: World) -> None:
    scopes = "system/DocumentReference.c system/Bundle.r system/Patient.r system/Condition.r"
    headers = world.token(scopes)
    document = rendered("clinic_note", seed=13)
    created = world.client.post(
        "/fhir/DocumentReference", json=document_reference(document.pdf, "application/pdf"), headers=headers
    )
    assert created.status_code == 201
    result = world.client.post(
        f"/fhir/DocumentReference/{created.json()['id']}/$extract", headers={**headers, "Prefer": "respond-sync"}
    )
    assert result.status_code == 200
    bundle = result.json()
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types == {"Patient", "Condition"}  # no MedicationStatement, Observation or Provenance scope
    assert world.client.get(f"/fhir/Bundle/{bundle['id']}", headers=headers).status_code == 200
    assert world.client.get("/fhir/Observation", headers=headers).status_code == 403


def test_token_response_shape(world: World) -> None:
    backend = register_backend(world.app, "system/*.rs")
    form = token_request(backend.key, backend.client_id, backend.token_endpoint, "system/Patient.rs system/Patient.c")
    response = world.client.post("/auth/token", data=form)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/Patient.rs" and 0 < body["expires_in"] <= 900
    claims = jwt.decode(body["access_token"], _server_keys(world), algorithms=["ES384"]).claims
    assert claims["aud"] == "http://127.0.0.1:8080/fhir" and claims["client_id"] == backend.client_id


def _server_keys(world: World) -> Any:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(world.client.get("/.well-known/jwks.json").json())


def _post_assertion(world: World, backend: BackendClient, assertion: str, scope: str = "system/*.rs") -> Any:
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
    return world.client.post("/auth/token", data=form)


def test_client_assertions_are_checked_to_the_letter(world: World) -> None:
    backend = register_backend(world.app, "system/*.rs")
    assertion = sign_client_assertion(backend.key, backend.client_id, backend.token_endpoint)
    assert _post_assertion(world, backend, assertion).status_code == 200
    replay = _post_assertion(world, backend, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"  # jti replay

    too_long = sign_client_assertion(backend.key, backend.client_id, backend.token_endpoint, lifetime_seconds=3600)
    wrong_audience = sign_client_assertion(backend.key, backend.client_id, "https://elsewhere/token")
    expired = sign_client_assertion(backend.key, backend.client_id, backend.token_endpoint, lifetime_seconds=-600)
    stranger = sign_client_assertion(generate_client_key(backend.key.kid), backend.client_id, backend.token_endpoint)
    no_jti = jwt.encode(
        {"alg": "ES384", "kid": backend.key.kid},
        {
            "iss": backend.client_id,
            "sub": backend.client_id,
            "aud": backend.token_endpoint,
            "exp": int(time.time()) + 60,
        },
        backend.key,
        algorithms=["ES384"],
    )
    weak = ECKey.generate_key("P-256", parameters={"kid": "weak"}, private=True)
    weak_client = register_backend(world.app, "system/*.rs")
    weak_assertion = jwt.encode(
        {"alg": "ES256", "kid": "weak"},
        {
            "iss": weak_client.client_id,
            "sub": weak_client.client_id,
            "aud": weak_client.token_endpoint,
            "exp": int(time.time()) + 60,
            "jti": "w1",
        },
        weak,
        algorithms=["ES256"],
    )
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    unsigned = header + "." + assertion.split(".")[1] + "."
    for bad in (too_long, wrong_audience, expired, stranger, no_jti, weak_assertion, unsigned, "not-a-jwt"):
        response = _post_assertion(world, backend, bad)
        assert response.status_code == 401 and response.json()["error"] == "invalid_client", bad[:20]


def test_scopes_beyond_the_registration_are_not_issued(world: World) -> None:
    backend = register_backend(world.app, "system/Observation.rs")
    form = token_request(backend.key, backend.client_id, backend.token_endpoint, "system/Patient.rs")
    response = world.client.post("/auth/token", data=form)
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    assert world.client.post("/auth/token", data={"grant_type": "password"}).json()["error"] == "unsupported_grant_type"


# --- bad tokens ----------------------------------------------------------------------------------


def test_requests_without_a_valid_token_get_401_with_www_authenticate(world: World) -> None:
    valid = world.token("system/Patient.rs")["Authorization"].removeprefix("Bearer ")
    header_b64, payload_b64, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    tokens = world.app.state.services.auth.tokens
    key = tokens._active
    wrong_audience = jwt.encode(
        json.loads(base64.urlsafe_b64decode(header_b64 + "==")),
        {**claims, "aud": "https://other.example/fhir"},
        key,
        algorithms=["ES384"],
    )
    expired = jwt.encode(
        json.loads(base64.urlsafe_b64decode(header_b64 + "==")),
        {**claims, "exp": int(time.time()) - 3600},
        key,
        algorithms=["ES384"],
    )
    forged_key = ECKey.generate_key("P-384", parameters={"kid": key.kid}, private=True)
    forged = jwt.encode({"alg": "ES384", "kid": key.kid}, claims, forged_key, algorithms=["ES384"])
    alg_none = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + "." + payload_b64 + "."
    tampered = f"{header_b64}.{payload_b64}.{signature[:-4]}AAAA"
    foreign_issuer = jwt.encode(
        {"alg": "ES384", "kid": "x"}, {**claims, "iss": "https://evil.example"}, forged_key, algorithms=["ES384"]
    )
    assert world.client.get("/fhir/Patient", headers=bearer(valid)).status_code == 200
    missing = world.client.get("/fhir/Patient")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="paperchart"'
    assert missing.json()["issue"][0]["code"] == "login"
    for bad in (wrong_audience, expired, forged, alg_none, tampered, foreign_issuer, "garbage"):
        response = world.client.get("/fhir/Patient", headers=bearer(bad))
        assert response.status_code == 401, bad[:30]
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    basic = world.client.get("/fhir/Patient", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401


def test_revoked_and_introspected_tokens(world: World) -> None:
    backend = register_backend(world.app, "system/Patient.rs")
    token = fetch_token(world.client, backend, "system/Patient.rs")

    def authenticated(form: dict[str, str]) -> dict[str, str]:
        assertion = sign_client_assertion(backend.key, backend.client_id, backend.token_endpoint)
        return {**form, "client_assertion_type": JWT_BEARER, "client_assertion": assertion}

    info = world.client.post("/auth/introspect", data=authenticated({"token": token})).json()
    assert info["active"] and info["scope"] == "system/Patient.rs" and info["client_id"] == backend.client_id
    assert world.client.post("/auth/introspect", data={"token": token}).status_code == 401  # unauthenticated caller
    assert world.client.post("/auth/revoke", data=authenticated({"token": token})).status_code == 200
    assert world.client.get("/fhir/Patient", headers=bearer(token)).status_code == 401
    assert world.client.post("/auth/introspect", data=authenticated({"token": token})).json() == {"active": False}


# --- the scope matrix ----------------------------------------------------------------------------


def _routes(world: World) -> list[tuple[str, str, dict[str, Any] | None, str, list[str]]]:
    """(method, path, JSON body, the exact scope it needs, scopes that must not be enough)."""
    document, bundle = world.documents[0], world.bundles[0]
    condition = World.first(bundle, "Condition")["id"]
    job = world.client.post(f"/fhir/DocumentReference/{document}/$extract", headers=world.admin_headers)
    job_path = urlparse(job.headers["content-location"]).path
    upload = document_reference(b"%PDF-1.4\n%%EOF", "application/pdf")
    patient = World.first(bundle, "Patient")
    return [
        (
            "POST",
            "/fhir/DocumentReference",
            upload,
            "system/DocumentReference.c",
            ["system/DocumentReference.rs", "system/Observation.c"],
        ),
        (
            "GET",
            f"/fhir/DocumentReference/{document}",
            None,
            "system/DocumentReference.r",
            ["system/DocumentReference.s", "system/Patient.r"],
        ),
        ("GET", "/fhir/DocumentReference", None, "system/DocumentReference.s", ["system/DocumentReference.r"]),
        ("GET", f"/fhir/Binary/{document}", None, "system/Binary.r", ["system/DocumentReference.r"]),
        (
            "POST",
            f"/fhir/DocumentReference/{document}/$extract",
            None,
            "system/DocumentReference.c",
            ["system/DocumentReference.r", "system/Bundle.c"],
        ),
        ("GET", job_path, None, "system/DocumentReference.c", ["system/DocumentReference.rs"]),
        (
            "GET",
            f"/fhir/Condition/{condition}",
            None,
            "system/Condition.r",
            ["system/Condition.s", "system/Observation.r"],
        ),
        ("GET", "/fhir/Condition", None, "system/Condition.s", ["system/Condition.r"]),
        ("GET", f"/fhir/Patient/{patient['id']}", None, "system/Patient.r", ["system/Condition.r"]),
        ("GET", f"/fhir/Bundle/{bundle['id']}", None, "system/Bundle.r", ["system/Bundle.s", "system/Patient.r"]),
        ("GET", "/fhir/Bundle", None, "system/Bundle.s", ["system/Bundle.r"]),
        ("GET", f"/fhir/Bundle/{bundle['id']}/$transaction", None, "system/Bundle.r", ["system/Bundle.s"]),
        ("POST", "/fhir/Patient/$validate", patient, "system/Patient.c", ["system/Patient.r", "system/Condition.c"]),
        (
            "GET",
            "/fhir/CodeSystem/$lookup?system=icd10cm&code=J45.909",
            None,
            "system/CodeSystem.r",
            ["system/ValueSet.r"],
        ),
        ("GET", "/fhir/ValueSet/$expand?url=icd10cm&filter=asthma", None, "system/ValueSet.r", ["system/CodeSystem.r"]),
        ("GET", "/fhir/AuditEvent", None, "system/AuditEvent.s", ["system/AuditEvent.r", "system/*.c"]),
    ]


def test_scope_matrix(world: World) -> None:
    for method, path, body, needed, insufficient in _routes(world):
        ok = world.client.request(method, path, json=body, headers=world.token(needed))
        assert ok.status_code not in (401, 403), f"{method} {path} with {needed}: {ok.status_code} {ok.text[:200]}"
        for scope in insufficient:
            refused = world.client.request(method, path, json=body, headers=world.token(scope))
            assert refused.status_code == 403, f"{method} {path} with {scope}: {refused.status_code}"
            assert refused.json()["issue"][0]["code"] == "forbidden"
        assert world.client.request(method, path, json=body).status_code == 401


def test_hl7_endpoint_needs_a_system_document_create_scope(world: World) -> None:
    from tests.fixtures.hl7_messages import mdm

    message = mdm("T02", control_id="AUTH-1", document_number="DOC-AUTH", text_lines=["Asthma."])
    headers = {"Content-Type": "x-application/hl7-v2+er7"}
    assert world.client.post("/hl7/v2", content=message, headers=headers).status_code == 401
    refused = world.client.post("/hl7/v2", content=message, headers={**headers, **world.token("system/*.rs")})
    assert refused.status_code == 403
    accepted = world.client.post(
        "/hl7/v2", content=message, headers={**headers, **world.token("system/DocumentReference.c")}
    )
    assert accepted.status_code == 200 and "MSA|AA" in accepted.text


def test_bundles_and_searches_show_only_what_the_token_may_read(world: World) -> None:
    headers = world.token("system/Bundle.rs system/Observation.rs")
    bundle = world.client.get(f"/fhir/Bundle/{world.bundles[0]['id']}", headers=headers).json()
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Observation"}
    listed = world.client.get("/fhir/Bundle", headers=headers).json()
    for entry in listed["entry"]:
        assert {e["resource"]["resourceType"] for e in entry["resource"]["entry"]} <= {"Observation"}


def test_query_constrained_scope_sees_only_matching_resources(world: World) -> None:
    everything = world.client.get("/fhir/Observation", params={"_count": 200}, headers=world.admin_headers).json()

    def categories(o: dict[str, Any]) -> set[str]:
        return {c["code"] for cat in o.get("category", []) for c in cat["coding"]}

    labs = [e for e in everything["entry"] if "laboratory" in categories(e["resource"])]
    others = [e for e in everything["entry"] if "laboratory" not in categories(e["resource"])]
    assert labs and others
    headers = world.token("system/Observation.rs?category=laboratory")
    seen = world.client.get("/fhir/Observation", params={"_count": 200}, headers=headers).json()
    assert {e["resource"]["id"] for e in seen["entry"]} == {e["resource"]["id"] for e in labs}
    assert "total" not in seen  # it would count what the token may not see
    vital = others[0]["resource"]["id"]
    assert world.client.get(f"/fhir/Observation/{vital}", headers=headers).status_code == 403


# --- SMART App Launch: authorization code + PKCE, patient context, refresh --------------------------


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _launch(world: World, client_id: str, username: str, patient: str | None, scope: str) -> tuple[str, str]:
    """Drive the login and consent pages like a browser; returns (code, verifier)."""
    verifier, challenge = _pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "s-123",
        "aud": "http://127.0.0.1:8080/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    login = world.client.get(f"/auth/authorize?{urlencode(params)}")
    assert login.status_code == 200 and "password" in login.text
    assert "frame-ancestors" in login.headers["content-security-policy"] or login.headers["x-frame-options"] == "DENY"
    wrong = world.client.post("/auth/authorize", data={**params, "username": username, "password": "nope"})
    assert wrong.status_code == 401 and "wrong" in wrong.text
    consent = world.client.post("/auth/authorize", data={**params, "username": username, "password": PASSWORD})
    assert consent.status_code == 200 and "Allow" in consent.text
    ticket = re.search(r"name='login_ticket' value='([^']+)'", consent.text)
    assert ticket is not None
    form = {**params, "login_ticket": ticket.group(1), "decision": "allow", **({"patient": patient} if patient else {})}
    redirect = world.client.post("/auth/authorize", data=form, follow_redirects=False)
    assert redirect.status_code == 302, redirect.text
    query = parse_qs(urlparse(redirect.headers["location"]).query)
    assert query["state"] == ["s-123"]
    return query["code"][0], verifier


@pytest.fixture(scope="module")
def app_client(world: World) -> str:
    registry = world.app.state.services.auth.registry
    registry.add_user(
        "drsmith",
        PASSWORD,
        scopes=["user/*.rs", "launch/patient", "openid", "fhirUser", "offline_access"],
        fhir_user="Practitioner/dr-smith",
    )
    client = registry.add_client(
        name="Chart viewer",
        kind="public",
        scopes=["patient/*.rs", "user/*.rs", "launch/patient", "openid", "fhirUser", "offline_access"],
        redirect_uris=[REDIRECT],
    )
    return client.client_id


def _exchange(world: World, client_id: str, code: str, verifier: str) -> Any:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    return world.client.post("/auth/token", data=form)


def test_patient_app_launch_is_held_to_its_patient(world: World, app_client: str) -> None:
    mine, other = world.patients
    scope = "launch/patient patient/*.rs openid fhirUser offline_access"
    code, verifier = _launch(world, app_client, "drsmith", mine, scope)
    response = _exchange(world, app_client, code, verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == mine and body["refresh_token"] and body["id_token"]
    id_token = jwt.decode(body["id_token"], _server_keys(world), algorithms=["ES384"])
    assert id_token.claims["fhirUser"] == "Practitioner/dr-smith"
    headers = bearer(body["access_token"])

    assert world.client.get(f"/fhir/Patient/{mine}", headers=headers).status_code == 200
    assert world.client.get(f"/fhir/Patient/{other}", headers=headers).status_code == 403
    conditions = world.client.get("/fhir/Condition", headers=headers).json()
    assert conditions["entry"] and all(
        e["resource"]["subject"]["reference"] == f"Patient/{mine}" for e in conditions["entry"]
    )
    assert world.client.get("/fhir/Condition", params={"patient": other}, headers=headers).status_code == 403
    assert world.client.get(f"/fhir/Binary/{world.documents[1]}", headers=headers).status_code == 403
    assert world.client.get(f"/fhir/Bundle/{world.bundles[1]['id']}", headers=headers).status_code == 403
    assert world.client.get(f"/fhir/Bundle/{world.bundles[0]['id']}", headers=headers).status_code == 200

    # the code is single use
    assert _exchange(world, app_client, code, verifier).json()["error"] == "invalid_grant"
    # refresh tokens rotate: the new one works once, the old one never again
    refreshed = world.client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": app_client},
    )
    assert refreshed.status_code == 200 and refreshed.json()["patient"] == mine
    again = world.client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": app_client},
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_pkce_and_redirect_checks(world: World, app_client: str) -> None:
    code, _ = _launch(world, app_client, "drsmith", world.patients[0], "launch/patient patient/*.rs")
    wrong_verifier = _exchange(world, app_client, code, secrets.token_urlsafe(48))
    assert wrong_verifier.status_code == 400 and wrong_verifier.json()["error"] == "invalid_grant"
    unregistered = world.client.get(
        "/auth/authorize?" + urlencode({"client_id": app_client, "redirect_uri": "https://evil.example/cb"})
    )
    assert unregistered.status_code == 400 and "evil" not in unregistered.headers.get("location", "")
    no_pkce = world.client.get(
        "/auth/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": app_client,
                "redirect_uri": REDIRECT,
                "scope": "patient/*.rs",
                "aud": "http://127.0.0.1:8080/fhir",
                "state": "x",
            }
        ),
        follow_redirects=False,
    )
    assert no_pkce.status_code == 302 and "error=invalid_request" in no_pkce.headers["location"]


def test_user_scope_launch_without_patient(world: World, app_client: str) -> None:
    code, verifier = _launch(world, app_client, "drsmith", None, "user/Condition.rs user/Condition.c openid")
    body = _exchange(world, app_client, code, verifier).json()
    assert body["scope"] == "user/Condition.rs openid"  # the user may not write, so .c is dropped
    assert "patient" not in body
    headers = bearer(body["access_token"])
    assert len(world.client.get("/fhir/Condition", params={"_count": 200}, headers=headers).json()["entry"]) >= 2


# --- external identity provider --------------------------------------------------------------------


def test_tokens_from_a_configured_external_issuer(tmp_path: Path) -> None:
    from server.config import load_settings

    idp_key = RSAKey.generate_key(2048, parameters={"kid": "idp-1", "alg": "RS256"}, private=True)
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [idp_key.as_dict(private=False)]}))
    issuer = "https://idp.example/realms/clinic"
    settings = load_settings(
        {},
        data_dir=tmp_path / "data",
        mllp_enabled=False,
        semantic_search=False,
        external_issuer=issuer,
        external_jwks_file=jwks_file,
    )

    def token(**overrides: Any) -> dict[str, str]:
        claims = {
            "iss": issuer,
            "aud": ["http://127.0.0.1:8080/fhir", "account"],
            "sub": "svc-1",
            "azp": "interface-engine",
            "scope": "system/Patient.rs",
            "exp": int(time.time()) + 300,
            **overrides,
        }
        return bearer(jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, idp_key, algorithms=["RS256"]))

    with TestClient(app=create_app(settings)) as client:
        assert client.get("/fhir/Patient", headers=token()).status_code == 200
        assert client.get("/fhir/Condition", headers=token()).status_code == 403
        assert client.get("/fhir/Patient", headers=token(aud="https://someone-else")).status_code == 401
        assert client.get("/fhir/Patient", headers=token(exp=int(time.time()) - 3600)).status_code == 401


# --- data at rest --------------------------------------------------------------------------------


def test_the_database_files_hold_no_plaintext_phi(world: World) -> None:
    data_dir = world.app.state.services.settings.data_dir
    raw = b"".join(p.read_bytes() for p in Path(data_dir).iterdir() if p.is_file() and p.name != "master.key")
    assert len(raw) > 100_000
    for truth in world.truths:
        patient = truth.patient
        secrets_ = [patient.family, patient.given, patient.mrn, patient.nhs_number, patient.birth_date]
        secrets_ += [d.text for d in truth.diagnoses] + [m.name for m in truth.medications]
        for secret in secrets_:
            assert secret.encode() not in raw, "plaintext PHI in the data files"


# --- audit trail ---------------------------------------------------------------------------------


def test_every_access_is_audited_without_phi(world: World) -> None:
    reader = register_backend(world.app, "system/Patient.rs")
    headers = bearer(fetch_token(world.client, reader, "system/Patient.rs"))
    patient = world.patients[0]
    mrn = world.truths[0].patient.mrn
    assert world.client.get(f"/fhir/Patient/{patient}", headers=headers).status_code == 200
    assert world.client.get("/fhir/Patient", params={"identifier": mrn}, headers=headers).status_code == 200
    assert world.client.get("/fhir/Condition", headers=headers).status_code == 403

    auditor = world.token("system/AuditEvent.rs")
    events = world.client.get("/fhir/AuditEvent", params={"_count": 500}, headers=auditor).json()["entry"]
    mine = [
        e["resource"] for e in events if e["resource"]["agent"][0]["who"]["identifier"]["value"] == reader.client_id
    ]
    interactions = [
        (e["subtype"][0]["code"], e["outcome"], [x["what"]["reference"] for x in e.get("entity", [])]) for e in mine
    ]
    assert ("token", "0", []) in interactions
    assert ("read", "0", [f"Patient/{patient}"]) in interactions
    assert ("search-type", "0", []) in interactions
    assert ("search-type", "4", []) in interactions  # the refused Condition search
    one = world.client.get(f"/fhir/AuditEvent/{events[0]['resource']['id']}", headers=auditor)
    assert one.status_code == 200 and one.json()["resourceType"] == "AuditEvent"

    from terminology.sqlite_driver import connect

    rows = connect(world.app.state.services.settings.database_path).execute("SELECT record FROM audit_log").fetchall()
    text = "\n".join(r[0] for r in rows)
    for truth in world.truths:
        for secret in (truth.patient.family, truth.patient.mrn, truth.patient.nhs_number):
            assert secret not in text
    # patient/ tokens never see the audit trail, even with an AuditEvent scope
    assert world.client.get("/fhir/AuditEvent", headers=world.token("system/Patient.rs")).status_code == 403


def test_audit_verify_command_detects_tampering(world: World, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    data = tmp_path / "copy"
    source = Path(world.app.state.services.settings.data_dir)
    shutil.copytree(source, data)
    env = {**os.environ, "PAPERCHART_DATA_DIR": str(data)}

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", "audit", "verify"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    intact = verify()
    assert intact.returncode == 0 and "chain intact" in intact.stdout
    from terminology.sqlite_driver import connect

    db = connect(data / "paperchart.db")
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET record = record || ' ' WHERE seq = 3")  # any change at all
    db.commit()
    db.close()
    broken = verify()
    assert broken.returncode == 1 and "BROKEN" in broken.stdout


def test_deleting_a_document_shreds_it_and_its_results(world: World) -> None:
    document = rendered("medication_list", seed=21)
    created = world.client.post(
        "/fhir/DocumentReference", json=document_reference(document.pdf, "application/pdf"), headers=world.admin_headers
    ).json()
    bundle = world.client.post(
        f"/fhir/DocumentReference/{created['id']}/$extract", headers={**world.admin_headers, "Prefer": "respond-sync"}
    ).json()
    statement = World.first(bundle, "MedicationStatement")["id"]
    assert (
        world.client.delete(f"/fhir/DocumentReference/{created['id']}", headers=world.token("system/*.rs")).status_code
        == 403
    )
    assert (
        world.client.delete(
            f"/fhir/DocumentReference/{created['id']}", headers=world.token("system/DocumentReference.d")
        ).status_code
        == 204
    )
    for path in (
        f"/fhir/DocumentReference/{created['id']}",
        f"/fhir/Binary/{created['id']}",
        f"/fhir/Bundle/{bundle['id']}",
        f"/fhir/MedicationStatement/{statement}",
    ):
        assert world.client.get(path, headers=world.admin_headers).status_code == 404, path


def test_only_users_who_may_read_patients_get_the_patient_picker(world: World, app_client: str) -> None:
    world.app.state.services.auth.registry.add_user(
        "clerk", PASSWORD, scopes=["user/DocumentReference.c", "launch/patient"]
    )
    _, challenge = _pkce()
    params = {
        "response_type": "code",
        "client_id": app_client,
        "redirect_uri": REDIRECT,
        "scope": "launch/patient patient/*.rs",
        "state": "s",
        "aud": "http://127.0.0.1:8080/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = world.client.post(
        "/auth/authorize", data={**params, "username": "clerk", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 302 and "error=" in response.headers["location"]
    assert world.truths[0].patient.family not in response.text
