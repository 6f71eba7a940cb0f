"""The review page at ``/review``: sign in, the queue, one document beside its page images, release.

Server-rendered (Jinja2 templates, htmx for validation as you type and code type-ahead, a small
script for the box overlay and the keyboard). Security: a person signs in through the built-in
SMART server (the page is the public client ``paperchart-review``, code flow with PKCE); tokens
live in HttpOnly SameSite=Strict cookies; every POST carries a CSRF token (double submit); a
strict Content-Security-Policy allows only this origin's script and style; no PHI in URLs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import anyio.to_thread
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from server import documents
from server.auth import QUIET_PUBLIC, Access, Caller, OAuthError
from server.auth.session import (
    COOKIE_PATH,
    CSRF_COOKIE,
    LOGIN_COOKIE,
    REFRESH_COOKIE,
    REVIEW_CLIENT_ID,
    REVIEW_SCOPES,
    SESSION_COOKIE,
    SessionTokens,
)
from server.errors import InvalidRequest, LoginRequired, PaperchartError
from server.http.auth import grant_by_code
from server.pipeline.code import drug_system
from server.review import service
from server.review.edits import ADDED_KINDS, ASSERTIONS, AddedFinding, Decision, FieldEdit, parse_code
from server.review.validation import validate_field
from server.services import Services
from terminology import Candidate
from terminology.model import RXNORM, SNOMED

TEMPLATES: Final = Path(__file__).resolve().parents[1] / "review" / "templates"
STATIC: Final = Path(__file__).resolve().parents[1] / "review" / "static"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _session(*interactions: str, resource_type: str = "Bundle") -> dict[str, Any]:
    return Access(resource_type=resource_type, interactions=interactions, session=True).as_opt()


def _cookie(name: str, value: str, secure: bool, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=name, value=value, path=COOKIE_PATH, httponly=True, secure=secure, samesite="strict", max_age=max_age
    )


def _secure(services: Services) -> bool:
    return services.settings.public_base_url.startswith("https://")


def _session_cookies(services: Services, tokens: SessionTokens) -> list[Cookie]:
    secure = _secure(services)
    cookies = [_cookie(SESSION_COOKIE, tokens.access, secure)]
    if tokens.refresh:
        cookies.append(_cookie(REFRESH_COOKIE, tokens.refresh, secure))
    return cookies


def _login_seal(services: Services, value: str) -> str:
    """The login state cookie: value plus an HMAC, so it cannot be forged or swapped."""
    key = services.store.deployment_secret("review-login")
    mac = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{mac}"


def _login_unseal(services: Services, sealed: str | None) -> str | None:
    if not sealed or "." not in sealed:
        return None
    value, _, _ = sealed.rpartition(".")
    return value if hmac.compare_digest(_login_seal(services, value), sealed) else None


async def _check_csrf(request: Request[Any, Any, Any], form: dict[str, Any] | None = None) -> None:
    expected = request.cookies.get(CSRF_COOKIE)
    given = request.headers.get("x-csrf-token") or (form or {}).get("csrf")
    if not expected or not given or not hmac.compare_digest(str(given), expected):
        raise InvalidRequest("the form is out of date or did not come from this site; reload the page")


def _context(request: Request[Any, Any, Any], caller: Caller, **values: Any) -> dict[str, Any]:
    return {"csrf": request.cookies.get(CSRF_COOKIE, ""), "reviewer": caller.subject, **values}


def _after(response: Response[Any]) -> Response[Any]:
    response.headers.update(
        {
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
    )
    return response


async def _security_headers(response: Response[Any]) -> Response[Any]:
    return _after(response)


def _review_error(request: Request[Any, Any, Any], exc: PaperchartError) -> Response[Any]:
    if isinstance(exc, LoginRequired):
        if request.method == "GET":
            return _after(Redirect(path="/review/login", status_code=303))
        return _after(Response(content="Your session ended: sign in again.", status_code=401, media_type="text/plain"))
    status = exc.http_status
    return _after(
        Template(
            template_name="error.html",
            context={"message": exc.message, "status": status, "csrf": "", "reviewer": ""},
            status_code=status,
        )
    )


class ReviewController(Controller):
    path = "/review"
    exception_handlers = {PaperchartError: _review_error}  # noqa: RUF012 - Litestar's declaration style

    after_request = _security_headers  # type: ignore[assignment]  # Litestar calls the plain function

    # --- signing in ------------------------------------------------------------------------

    @get("/login", opt=QUIET_PUBLIC)
    async def login(self, services: NamedDependency[Services]) -> Response[Any]:
        settings = services.settings
        state, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = {
            "response_type": "code",
            "client_id": REVIEW_CLIENT_ID,
            "redirect_uri": f"{settings.public_base_url.rstrip('/')}/review/callback",
            "scope": " ".join(REVIEW_SCOPES),
            "state": state,
            "aud": settings.fhir_base_url,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response: Response[Any] = Redirect(path=f"/auth/authorize?{urlencode(query)}", status_code=303)
        response.set_cookie(_cookie(LOGIN_COOKIE, _login_seal(services, f"{state}:{verifier}"), _secure(services), 600))
        return response

    @get("/callback", opt=QUIET_PUBLIC | {"audit": True})
    async def callback(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        code: Annotated[str | None, QueryParameter(name="code")] = None,
        oauth_state: Annotated[str | None, QueryParameter(name="state")] = None,
        error: Annotated[str | None, QueryParameter(name="error")] = None,
    ) -> Response[Any]:
        remembered = _login_unseal(services, request.cookies.get(LOGIN_COOKIE))
        if error or not code or remembered is None or remembered.split(":", 1)[0] != oauth_state:
            raise InvalidRequest("sign-in did not complete; start again from the review page")
        verifier = remembered.split(":", 1)[1]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": REVIEW_CLIENT_ID,
            "redirect_uri": f"{services.settings.public_base_url.rstrip('/')}/review/callback",
            "code_verifier": verifier,
        }
        try:
            body = await grant_by_code(services, form)
        except OAuthError as exc:
            raise InvalidRequest(exc.description) from None
        response: Response[Any] = Redirect(path="/review", status_code=303)
        tokens = SessionTokens(access=body["access_token"], refresh=body.get("refresh_token"))
        for cookie in _session_cookies(services, tokens):
            response.set_cookie(cookie)
        response.set_cookie(_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), _secure(services)))
        response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
        return response

    @post("/logout", opt=_session("s"), status_code=303)
    async def logout(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        form = dict((await request.form()).items())
        await _check_csrf(request, form)
        refresh = request.cookies.get(REFRESH_COOKIE)
        if refresh:
            await anyio.to_thread.run_sync(services.auth.registry.revoke_refresh_token, refresh)
        response: Response[Any] = Redirect(path="/review/signed-out", status_code=303)
        for name in (SESSION_COOKIE, REFRESH_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path=COOKIE_PATH)
        return response

    @get("/signed-out", opt=QUIET_PUBLIC)
    async def signed_out(self) -> Template:
        return Template(template_name="signed_out.html", context={"csrf": "", "reviewer": ""})

    # --- the queue and a document ---------------------------------------------------------------

    @get("/", opt=_session("s"))
    async def queue(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        show: Annotated[str, QueryParameter(name="show")] = "pending",
    ) -> Response[Any]:
        items = await service.queue(services, caller, show_all=show == "all")
        response = Template(template_name="queue.html", context=_context(request, caller, items=items, show=show))
        return _with_renewed(request, services, response)

    @get("/documents/{document_id:str}", opt=_session("r"))
    async def document(
        self,
        request: Request[Any, Any, Any],
        document_id: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        view = await service.document_view(services, caller, document_id)
        context = _context(request, caller, view=view, assertions=sorted(ASSERTIONS), added_kinds=ADDED_KINDS)
        return _with_renewed(request, services, Template(template_name="document.html", context=context))

    @get("/documents/{document_id:str}/pages/{page:int}", opt=_session("r", resource_type="Binary"))
    async def page_image(
        self,
        request: Request[Any, Any, Any],
        document_id: FromPath[str],
        page: FromPath[int],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[bytes]:
        png = await documents.page_image(services, caller, document_id, page, deidentified=False)
        return Response(content=png, media_type="image/png")

    # --- as the reviewer types ------------------------------------------------------------------

    @post("/validate", opt=_session("r"), status_code=200)
    async def validate(self, request: Request[Any, Any, Any]) -> Response[str]:
        await _check_csrf(request)
        form = dict((await request.form()).items())
        messages = []
        for name, value in form.items():
            if name.startswith("edit:"):
                _, reference, field = name.split(":", 2)
                problem = validate_field(reference.split("/", 1)[0], field, str(value))
            elif name in ("add_value", "add_unit") and str(value).strip():  # the add form's, checked alike
                field = name.removeprefix("add_")
                if form.get("add_kind") == "MedicationStatement":
                    problem = validate_field("MedicationStatement", "dose" if field == "value" else field, str(value))
                elif form.get("add_kind") == "VitalSign" and field == "value":  # "88", or "120/80"
                    parts = str(value).split("/", 1)
                    problem = next(
                        (p for p in (validate_field("Observation", "value", v) for v in parts) if p is not None), None
                    )
                else:
                    problem = validate_field("Observation", field, str(value))
            else:
                continue
            if problem:
                messages.append(problem)
        text = " ".join(messages)
        return Response(content=_escape(text), media_type="text/html")

    @get("/codes", opt=_session("r", resource_type="ValueSet"))
    async def codes(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[str]:
        """Type-ahead for a code: the same terminology lookup as ``ValueSet/$expand`` and ``lookup_code``.

        The query is the code field's own value (``edit:<reference>:code``, or ``add_code`` with
        ``add_kind`` naming what is added), or ``q``; ``system`` picks the code system.
        """
        from terminology import resolve_system

        params = request.query_params
        typed = next((str(v) for k, v in params.items() if k in ("q", "add_code") or k.endswith(":code")), "")
        q = typed.split("|")[0] if "|" not in typed else typed.rsplit("|", 1)[-1]
        terminology = services.terminology
        if terminology is None or len(q.strip()) < 2:
            return Response(content="", media_type="text/html")
        # the system of what is coded: the add form's kind, or the kind of the resource whose code is edited
        kind = str(params.get("add_kind") or next((k[5:].split("/")[0] for k in params if k.startswith("edit:")), ""))
        system = resolve_system(str(params.get("system") or _ADDED_SYSTEMS.get(kind, "icd10cm")))

        def lookup() -> list[Candidate]:
            indexed = system
            if system == RXNORM:  # medications in the system the pipeline codes them in
                indexed = drug_system({s.info.system for s in terminology.code_systems()}) or SNOMED
            return terminology.lookup(q, systems=[indexed], limit=8)

        candidates = await anyio.to_thread.run_sync(lookup)
        options = "".join(
            f'<option value="{_escape(f"{c.system}|{c.code}|{c.display}")}">{_escape(f"{c.code} {c.display}")}</option>'
            for c in candidates
        )
        return Response(content=options, media_type="text/html")

    # --- release or return -----------------------------------------------------------------------

    @post("/documents/{document_id:str}/release", opt=_session("u"), status_code=303)
    async def release(
        self,
        request: Request[Any, Any, Any],
        document_id: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        form = await request.form()
        await _check_csrf(request, dict(form.items()))
        decision = _decision(form)
        version = await service.release(services, caller, document_id, _version(form), decision)
        return _with_renewed(
            request, services, Redirect(path=f"/review?released={document_id}&version={version}", status_code=303)
        )

    @post("/documents/{document_id:str}/return", opt=_session("u"), status_code=303)
    async def return_document(
        self,
        request: Request[Any, Any, Any],
        document_id: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        form = await request.form()
        await _check_csrf(request, dict(form.items()))
        await service.return_document(services, caller, document_id, _version(form), str(form.get("comment", "")))
        return _with_renewed(request, services, Redirect(path="/review", status_code=303))


def _with_renewed(request: Request[Any, Any, Any], services: Services, response: Response[Any]) -> Response[Any]:
    renewed = getattr(request.state, "renewed_session", None)
    if isinstance(renewed, SessionTokens):
        for cookie in _session_cookies(services, renewed):
            response.set_cookie(cookie)
    return response


def _version(form: Any) -> int:
    try:
        return int(form.get("version", ""))
    except ValueError:
        raise InvalidRequest("the form is missing the version it was made from; reload the page") from None


# the code system a reviewer's addition is coded in, by what is added (as the pipeline codes them)
_ADDED_SYSTEMS: Final = {
    "Condition": "icd10cm",
    "MedicationStatement": "rxnorm",
    "Observation": "loinc",
    "VitalSign": "loinc",
    "AllergyIntolerance": "snomed",
    "Procedure": "snomed",
}


def _decision(form: Any) -> Decision:
    """The reviewer's edits, rejections and additions from the release form."""
    edits = []
    for name, value in form.items():
        if name.startswith("edit:"):
            _, reference, field = name.split(":", 2)
            edits.append(FieldEdit(reference=reference, field=field, value=str(value)))
    rejected = tuple(str(v) for v in form.getall("reject")) if "reject" in form else ()
    added: list[AddedFinding] = []
    text = str(form.get("add_text", "")).strip()
    if text:
        box = None
        if form.get("add_box"):
            try:
                x0, y0, x1, y1 = (float(v) for v in str(form.get("add_box")).split(","))
                box = (x0, y0, x1, y1)
            except ValueError:
                raise InvalidRequest("the box drawn for the added finding is malformed") from None
        kind = str(form.get("add_kind", "Condition"))
        if kind not in ADDED_KINDS:
            raise InvalidRequest(f"an added finding is one of: {', '.join(ADDED_KINDS.values()).lower()}")
        value = str(form.get("add_value", "")).strip()
        value, _, diastolic = value.partition("/") if kind == "VitalSign" else (value, "", "")  # "120/80"
        code = str(form.get("add_code", "")).strip()
        try:
            added.append(
                AddedFinding(
                    kind=kind,  # type: ignore[arg-type]  # one of ADDED_KINDS, checked above
                    text=text,
                    assertion=str(form.get("add_assertion", "confirmed")),
                    value=float(value) if value else None,
                    diastolic=float(diastolic) if diastolic else None,
                    unit=str(form.get("add_unit", "")).strip() or None,
                    codings=(parse_code(code),) if code else (),
                    page=int(form.get("add_page")) if form.get("add_page") else None,
                    box=box,
                )
            )
        except ValueError:
            raise InvalidRequest("the added finding's dose, value or page is not a number") from None
    return Decision(edits=tuple(edits), rejected=rejected, added=tuple(added))


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


STATIC_ROUTER: Final = create_static_files_router(
    path="/review/static", directories=[STATIC], opt=QUIET_PUBLIC, name="review-static"
)
