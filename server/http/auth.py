"""The built-in SMART authorization server: discovery, token, authorize (login + consent), introspect, revoke.

- Discovery: ``/.well-known/smart-configuration`` (SMART App Launch 2.x §"SMART configuration"),
  also under the FHIR base where SMART clients look for it, and RFC 8414 metadata.
- ``POST /auth/token``: ``client_credentials`` with a ``private_key_jwt`` client assertion (SMART
  Backend Services), ``authorization_code`` with PKCE S256, ``refresh_token`` (rotated on use).
- ``GET/POST /auth/authorize``: a login page for local users, then (for ``launch/patient``) a
  patient picker and consent, then a redirect back with a one-time code.
- ``POST /auth/introspect`` (RFC 7662) and ``POST /auth/revoke`` (RFC 7009) for authenticated clients.

Token endpoint errors follow RFC 6749 §5.2 (JSON ``error``), not FHIR OperationOutcome.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from typing import Any, Final
from urllib.parse import urlencode

import anyio.to_thread
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Redirect

from fhir_profiles.compartment import patient_of
from server.auth import PUBLIC, QUIET_PUBLIC, OAuthError
from server.auth.assertion import JWT_BEARER
from server.auth.registry import Client, CodeGrant, RefreshGrant
from server.auth.scopes import Grant, narrow
from server.errors import Unauthorized
from server.services import Services

_PUBLIC_OPT: Final = PUBLIC.as_opt()
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# scopes a local user may be offered without appearing in their own list
_SESSION_SCOPES: Final = frozenset({"openid", "fhirUser", "launch/patient", "offline_access", "online_access"})


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def smart_configuration(services: Services) -> dict[str, Any]:
    settings = services.settings
    auth = settings.auth_base_url
    return {
        "issuer": settings.issuer,
        "jwks_uri": f"{settings.issuer}/.well-known/jwks.json",
        "authorization_endpoint": f"{auth}/authorize",
        "token_endpoint": f"{auth}/token",
        "introspection_endpoint": f"{auth}/introspect",
        "revocation_endpoint": f"{auth}/revoke",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch/patient",
            "offline_access",
            "online_access",
            "patient/*.rs",
            "user/*.cruds",
            "system/*.cruds",
            "patient/*.read",
            "user/*.read",
            "user/*.write",
            "system/*.read",
            "system/*.write",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "client-confidential-asymmetric",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
            "authorize-post",
        ],
    }


@get(["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"], opt=QUIET_PUBLIC)
async def smart_configuration_document(state: State) -> Response[dict[str, Any]]:
    return Response(smart_configuration(_services(state)), media_type="application/json")


@get("/.well-known/oauth-authorization-server", opt=QUIET_PUBLIC)
async def authorization_server_metadata(state: State) -> Response[dict[str, Any]]:
    """RFC 8414 metadata (the same facts as the SMART document, in that RFC's field names)."""
    smart = smart_configuration(_services(state))
    keys = (
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
        "scopes_supported",
        "response_types_supported",
        "code_challenge_methods_supported",
    )
    return Response({k: smart[k] for k in keys}, media_type="application/json")


@get("/.well-known/jwks.json", opt=QUIET_PUBLIC)
async def jwks(state: State) -> Response[dict[str, Any]]:
    return Response(_services(state).auth.tokens.jwks(), media_type="application/jwk-set+json")


def _oauth_error(error: OAuthError) -> Response[dict[str, str]]:
    headers = dict(_NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="paperchart"'
    return Response(
        {"error": error.error, "error_description": error.description}, status_code=error.status, headers=headers
    )


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    form = await request.form()
    return {key: str(value) for key, value in form.items()}


async def _authenticate_client(services: Services, form: dict[str, str]) -> Client:
    """private_key_jwt for backend clients; public clients name themselves with ``client_id``."""
    if "client_assertion" in form:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise OAuthError("invalid_client", f"client_assertion_type must be {JWT_BEARER}", 401)
        return await anyio.to_thread.run_sync(services.auth.tokens.verify_client_assertion, form["client_assertion"])
    client = await anyio.to_thread.run_sync(services.auth.registry.get_client, form.get("client_id", ""))
    if client is None or client.kind != "public":
        raise OAuthError("invalid_client", "client authentication failed", 401)
    return client


def token_body(
    services: Services,
    client: Client,
    *,
    subject: str,
    scopes: list[str],
    patient: str | None = None,
    fhir_user: str | None = None,
    username: str | None = None,
    resource: str | None = None,
) -> dict[str, Any]:
    """An RFC 6749 §5.1 token response: access token, refresh token (offline/online access), ID token."""
    tokens = services.auth.tokens
    access_token, expires_in = tokens.issue(
        client_id=client.client_id,
        subject=subject,
        scopes=scopes,
        patient=patient,
        fhir_user=fhir_user,
        audience=resource,
    )
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": " ".join(scopes),
    }
    if patient is not None:
        body["patient"] = patient
    if {"offline_access", "online_access"} & set(scopes) and username is not None:
        body["refresh_token"] = services.auth.registry.issue_refresh_token(
            RefreshGrant(client_id=client.client_id, username=username, scopes=tuple(scopes), patient=patient),
            services.settings.refresh_token_lifetime_seconds,
        )
    if "openid" in scopes and fhir_user is not None:
        body["id_token"] = tokens.issue_id_token(client_id=client.client_id, subject=subject, fhir_user=fhir_user)
    return body


@post("/auth/token", opt=_PUBLIC_OPT, status_code=200)
async def token(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    services = _services(state)
    try:
        form = await _form(request)
        grant_type = form.get("grant_type")
        if grant_type == "client_credentials":
            return await _client_credentials(request, services, form)
        if grant_type == "authorization_code":
            return await _authorization_code(services, form)
        if grant_type == "refresh_token":
            return await _refresh(services, form)
        raise OAuthError(
            "unsupported_grant_type", "grant_type must be client_credentials, authorization_code or refresh_token"
        )
    except OAuthError as error:
        return _oauth_error(error)


async def _client_credentials(
    request: Request[Any, Any, Any], services: Services, form: dict[str, str]
) -> Response[Any]:
    if "client_assertion" not in form:
        raise OAuthError("invalid_client", "client_credentials needs a private_key_jwt client_assertion", 401)
    client = await _authenticate_client(services, form)
    request.state.audit_client = client.client_id
    requested = form.get("scope", "").split()
    # a backend client acts for itself: system/ scopes and operation scopes, never a user or patient context
    scopes = [s for s in narrow(requested, client.scopes) if s.startswith("system/") or "/" not in s]
    if not scopes:
        raise OAuthError("invalid_scope", "none of the requested scopes is allowed for this client")
    resource = _resource(services, form)
    return Response(
        token_body(services, client, subject=client.client_id, scopes=scopes, resource=resource), headers=_NO_STORE
    )


def _resource(services: Services, form: dict[str, str]) -> str | None:
    """RFC 8707 resource indicator: the FHIR base (the default) or the MCP endpoint."""
    resource = form.get("resource")
    if resource is None:
        return None
    if resource.rstrip("/") not in (services.settings.fhir_base_url, services.settings.mcp_url):
        raise OAuthError("invalid_target", "resource must be this server's FHIR base URL or MCP endpoint")
    return resource.rstrip("/")


def _pkce_matches(verifier: str, challenge: str) -> bool:
    # RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest()).rstrip(b"=")
    return secrets.compare_digest(digest.decode(), challenge)


async def _authorization_code(services: Services, form: dict[str, str]) -> Response[Any]:
    return Response(await grant_by_code(services, form), headers=_NO_STORE)


async def grant_by_code(services: Services, form: dict[str, str]) -> dict[str, Any]:
    """Redeem an authorization code (PKCE checked); the token response body. Raises ``OAuthError``."""
    client = await _authenticate_client(services, form)
    grant = await anyio.to_thread.run_sync(services.auth.registry.redeem_code, form.get("code", ""))
    if grant is None or grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "the authorization code is invalid, expired or already used")
    if form.get("redirect_uri") != grant.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    verifier = form.get("code_verifier", "")
    if not 43 <= len(verifier) <= 128 or not _pkce_matches(verifier, grant.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge (PKCE S256)")
    user = await anyio.to_thread.run_sync(services.auth.registry.get_user, grant.username)
    if user is None:
        raise OAuthError("invalid_grant", "the user no longer exists")
    return token_body(
        services,
        client,
        subject=user.username,
        scopes=list(grant.scopes),
        patient=grant.patient,
        fhir_user=user.fhir_user,
        username=user.username,
        resource=_resource(services, form),
    )


async def _refresh(services: Services, form: dict[str, str]) -> Response[Any]:
    client = await _authenticate_client(services, form)
    grant = await anyio.to_thread.run_sync(
        services.auth.registry.rotate_refresh_token, form.get("refresh_token", ""), client.client_id
    )
    if grant is None or grant.username is None:
        raise OAuthError("invalid_grant", "the refresh token is invalid, expired, revoked or already used")
    user = await anyio.to_thread.run_sync(services.auth.registry.get_user, grant.username)
    if user is None:
        raise OAuthError("invalid_grant", "the user no longer exists")
    requested = form.get("scope", "").split() or list(grant.scopes)
    scopes = narrow(requested, grant.scopes)  # a refresh may narrow, never widen (RFC 6749 §6)
    if not scopes:
        raise OAuthError("invalid_scope", "the requested scopes exceed the original grant")
    body = token_body(
        services,
        client,
        subject=user.username,
        scopes=scopes,
        patient=grant.patient,
        fhir_user=user.fhir_user,
        username=user.username,
    )
    return Response(body, headers=_NO_STORE)


@post("/auth/introspect", opt=_PUBLIC_OPT, status_code=200)
async def introspect(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """RFC 7662: whether a token is active, for an authenticated backend client."""
    services = _services(state)
    try:
        form = await _form(request)
        if "client_assertion" not in form:
            raise OAuthError("invalid_client", "introspection needs a private_key_jwt client_assertion", 401)
        await _authenticate_client(services, form)
        value = form.get("token", "")
        try:
            claims = await anyio.to_thread.run_sync(services.auth.tokens.verify, value)
        except Unauthorized:
            refresh = await anyio.to_thread.run_sync(services.auth.registry.refresh_token_active, value)
            if refresh is None:
                return Response({"active": False}, headers=_NO_STORE)
            return Response(
                {
                    "active": True,
                    "client_id": refresh.client_id,
                    "scope": " ".join(refresh.scopes),
                    "token_type": "refresh_token",
                },
                headers=_NO_STORE,
            )
        body: dict[str, Any] = {
            "active": True,
            "scope": " ".join(claims.scopes),
            "client_id": claims.client_id,
            "sub": claims.subject,
            "exp": claims.expires_at,
            "iss": claims.issuer,
            "token_type": "Bearer",
        }
        if claims.patient:
            body["patient"] = claims.patient
        if claims.fhir_user:
            body["fhirUser"] = claims.fhir_user
        return Response(body, headers=_NO_STORE)
    except OAuthError as error:
        return _oauth_error(error)


@post("/auth/revoke", opt=_PUBLIC_OPT, status_code=200)
async def revoke(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """RFC 7009: revoke a refresh or access token; 200 whether or not it was known (§2.2)."""
    services = _services(state)
    try:
        form = await _form(request)
        client = await _authenticate_client(services, form)
        value = form.get("token", "")
        if not await anyio.to_thread.run_sync(services.auth.registry.revoke_refresh_token, value):
            try:
                claims = await anyio.to_thread.run_sync(services.auth.tokens.verify, value)
            except Unauthorized:
                return Response(b"", status_code=200, headers=_NO_STORE)
            if claims.client_id == client.client_id and claims.jti:
                services.auth.registry.revoke_access_token(claims.jti, float(claims.expires_at))
        return Response(b"", status_code=200, headers=_NO_STORE)
    except OAuthError as error:
        return _oauth_error(error)


# --- authorization code flow: login, patient picker, consent --------------------------------

_AUTHORIZE_PARAMETERS: Final = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
)


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} — paperchart</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}"
        "label{display:block;margin:.8rem 0 .2rem}input,select{width:100%;padding:.4rem}"
        "button{margin-top:1rem;padding:.5rem 1rem}li{margin:.2rem 0}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(
        document,
        status_code=status,
        media_type="text/html",
        headers={
            **_NO_STORE,
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            "X-Frame-Options": "DENY",
        },
    )


def _hidden(values: dict[str, str]) -> str:
    return "".join(
        f"<input type=hidden name='{html.escape(k)}' value='{html.escape(v, quote=True)}'>" for k, v in values.items()
    )


async def _check_authorize_request(services: Services, params: dict[str, str]) -> Client:
    """Errors before the redirect URI is trusted are shown, never redirected (RFC 6749 §4.1.2.1)."""
    client = await anyio.to_thread.run_sync(services.auth.registry.get_client, params.get("client_id", ""))
    if client is None:
        raise OAuthError("invalid_client", "unknown client_id")
    if params.get("redirect_uri") not in client.redirect_uris:
        raise OAuthError("invalid_request", "redirect_uri is not registered for this client")
    return client


def _redirect_error(params: dict[str, str], error: str, description: str) -> Redirect:
    query = {"error": error, "error_description": description}
    if params.get("state"):
        query["state"] = params["state"]
    return Redirect(path=f"{params['redirect_uri']}?{urlencode(query)}", status_code=302)


def _authorize_problem(services: Services, params: dict[str, str]) -> tuple[str, str] | None:
    if params.get("response_type") != "code":
        return "unsupported_response_type", "response_type must be code"
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        return "invalid_request", "PKCE with code_challenge_method S256 is required"
    if params.get("aud", "").rstrip("/") != services.settings.fhir_base_url:
        return "invalid_request", "aud must be this server's FHIR base URL"
    return None


@get("/auth/authorize", opt=QUIET_PUBLIC)
async def authorize_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    services = _services(state)
    params = {k: str(request.query_params[k]) for k in _AUTHORIZE_PARAMETERS if k in request.query_params}
    try:
        await _check_authorize_request(services, params)
    except OAuthError as error:
        return _page("Sign-in request refused", f"<p>{html.escape(error.description)}</p>", 400)
    problem = _authorize_problem(services, params)
    if problem is not None:
        return _redirect_error(params, *problem)
    return _login_form(params)


def _login_form(params: dict[str, str], message: str = "") -> Response[str]:
    notice = f"<p role=alert>{html.escape(message)}</p>" if message else ""
    return _page(
        "Sign in",
        f"{notice}<form method=post action='/auth/authorize'>{_hidden(params)}"
        "<label for=username>User name</label><input id=username name=username autocomplete=username required>"
        "<label for=password>Password</label>"
        "<input id=password name=password type=password autocomplete=current-password required>"
        "<button type=submit>Sign in</button></form>",
        401 if message else 200,
    )


@post("/auth/authorize", opt=_PUBLIC_OPT, status_code=200)
async def authorize_submit(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """Step 1 checks the password and shows consent (and the patient picker); step 2 issues the code."""
    services = _services(state)
    form = {key: str(value) for key, value in (await request.form()).items()}
    params: dict[str, str] = {k: form[k] for k in _AUTHORIZE_PARAMETERS if k in form}
    try:
        client = await _check_authorize_request(services, params)
    except OAuthError as error:
        return _page("Sign-in request refused", f"<p>{html.escape(error.description)}</p>", 400)
    problem = _authorize_problem(services, params)
    if problem is not None:
        return _redirect_error(params, *problem)
    tokens = services.auth.tokens
    if "login_ticket" in form:
        username = tokens.check_login_ticket(form["login_ticket"], client.client_id)
        user = await anyio.to_thread.run_sync(services.auth.registry.get_user, username) if username else None
    else:
        user = await anyio.to_thread.run_sync(
            services.auth.registry.authenticate_user, form.get("username", ""), form.get("password", "")
        )
    request.state.audit_client = client.client_id
    if user is None:
        return _login_form(params, "User name or password is wrong, or the sign-in took too long.")
    request.state.audit_subject = user.username
    requested = params.get("scope", "").split()
    scopes = narrow(requested, client.scopes, [*user.scopes, *_SESSION_SCOPES])
    if not any(s.startswith(("patient/", "user/")) for s in scopes):
        return _redirect_error(params, "invalid_scope", "none of the requested scopes may be granted to this user")
    wants_patient = "launch/patient" in scopes or any(s.startswith("patient/") for s in scopes)
    if wants_patient and not Grant.from_scopes(user.scopes).may("Patient", "r", contexts=("user",)):
        # the picker lists patients by name: only for users who may read patients themselves
        return _redirect_error(params, "access_denied", "this user may not choose a patient")
    decision = form.get("decision")
    if decision == "deny":
        return _redirect_error(params, "access_denied", "the user declined")
    if decision != "allow":
        return await _consent_page(services, params, client, user.username, scopes, wants_patient)
    patient = form.get("patient") or None
    chosen = await anyio.to_thread.run_sync(services.store.read_resource, "Patient", patient) if patient else None
    known = chosen is not None
    if wants_patient and not known:
        return await _consent_page(services, params, client, user.username, scopes, wants_patient, "Choose a patient.")
    code = await anyio.to_thread.run_sync(
        services.auth.registry.issue_code,
        CodeGrant(
            client_id=client.client_id,
            redirect_uri=params["redirect_uri"],
            username=user.username,
            scopes=tuple(scopes),
            patient=patient if wants_patient else None,
            code_challenge=params["code_challenge"],
        ),
        services.settings.authorization_code_lifetime_seconds,
    )
    query = {"code": code, **({"state": params["state"]} if params.get("state") else {})}
    return Redirect(path=f"{params['redirect_uri']}?{urlencode(query)}", status_code=302)


async def _consent_page(
    services: Services,
    params: dict[str, str],
    client: Client,
    username: str,
    scopes: list[str],
    wants_patient: bool,
    message: str = "",
) -> Response[str]:
    ticket = services.auth.tokens.issue_login_ticket(username, client.client_id)
    picker = ""
    if wants_patient:
        patients, _ = await anyio.to_thread.run_sync(lambda: services.store.search_resources("Patient", count=200))
        options = "".join(
            f"<option value='{html.escape(p.id)}'>{html.escape(_patient_label(p.resource))}</option>" for p in patients
        )
        picker = f"<label for=patient>Patient</label><select id=patient name=patient required>{options}</select>"
    items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in scopes)
    notice = f"<p role=alert>{html.escape(message)}</p>" if message else ""
    return _page(
        "Allow access?",
        f"{notice}<p><strong>{html.escape(client.name)}</strong> asks to act for you with:</p><ul>{items}</ul>"
        f"<form method=post action='/auth/authorize'>{_hidden({**params, 'login_ticket': ticket})}{picker}"
        "<button type=submit name=decision value=allow>Allow</button> "
        "<button type=submit name=decision value=deny>Deny</button></form>",
    )


def _patient_label(patient: dict[str, Any]) -> str:
    names = patient.get("name") or [{}]
    name = names[0]
    text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
    born = patient.get("birthDate", "")
    return f"{text or 'unnamed'} ({born})" if born else (text or "unnamed") or str(patient_of(patient))


AUTH_HANDLERS: Final = [
    smart_configuration_document,
    authorization_server_metadata,
    jwks,
    token,
    introspect,
    revoke,
    authorize_page,
    authorize_submit,
]
