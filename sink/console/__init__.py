"""The web console under ``/console/``: HTML pages whose small scripts read the audit API's JSON.

The pages are shells: each names its subject in ``data-`` attributes and ``console.js`` fetches the
answers from the ``/v1`` routes with the session cookie (same origin; :mod:`provline.sink.console.auth`
says where the cookie counts). Roles are the API's: a page shows what its reader's role may read,
because the JSON it is built from is refused otherwise. Every script, style and font is served from
``/console/static/`` under a Content-Security-Policy that allows this origin only and no inline script.

:func:`console_router` is mounted by :func:`provline.sink.api.create_api`; the API's access-log
middleware logs every console request, pages and static files included. Handlers do not block.
"""

from __future__ import annotations

import html
import mimetypes
from collections.abc import Callable, Mapping
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from provline.sink.console.auth import (
    CONSOLE_PREFIX,
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    cookie_accepted,
    csrf_problem,
    new_csrf_token,
    own_origin,
)

if TYPE_CHECKING:
    from provline.sink.api import Reader

__all__ = ["CONTENT_SECURITY_POLICY", "SESSION_COOKIE", "console_router", "cookie_accepted"]

# No other origin, no inline script or style, no plugins, no framing, forms post here only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: with it Chromium sends "Origin: null" on form posts
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 4096


def _package_files(folder: str) -> dict[str, bytes]:
    """Every file under this package's ``folder``, by its path relative to it (read once, at start-up)."""
    found: dict[str, bytes] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif not child.name.startswith("."):
                found[name] = child.read_bytes()

    walk(resources.files(__package__).joinpath(folder), "")
    return found


def render(template: str, values: Mapping[str, str], *, markup: Mapping[str, str] | None = None) -> str:
    """``template`` with ``$name`` placeholders replaced by the HTML-escaped ``values`` and, unescaped, by
    ``markup`` (HTML this module rendered itself). Pure."""
    escaped = {name: html.escape(value, quote=True) for name, value in values.items()}
    return Template(template).substitute({**escaped, **(markup or {})})


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request),
                        path=CONSOLE_PREFIX)


def _with_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def console_router(authenticate: Callable[[str], Reader | None]) -> APIRouter:
    """The console's routes. Who is asking comes from the API's middleware (``request.state.reader``);
    ``authenticate`` checks the token a reader signs in with, as the API checks its bearer tokens."""
    templates = {name: data.decode() for name, data in _package_files("templates").items()}
    static = _package_files("static")
    router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)

    def page(request: Request, name: str, title: str, subject: str = "", *, status: int = 200,
             error: str = "") -> Response:
        reader = getattr(request.state, "reader", None)
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
        values = {"title": title, "page": name, "subject": subject, "csrf": csrf, "error": error,
                  "reader": reader.name if reader else "", "role": reader.role if reader else "",
                  "csrf_field": CSRF_FIELD}
        body = render(templates[f"{name}.html"], values)
        response = HTMLResponse(render(templates["layout.html"], values, markup={"body": body}), status_code=status)
        _set_csrf_cookie(response, request, csrf)
        return _with_headers(response)

    def signed_in_page(request: Request, name: str, title: str, subject: str = "", *, role: str = "viewer") -> (
            Response):
        reader = getattr(request.state, "reader", None)
        if reader is None:
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
            return _with_headers(RedirectResponse(f"{CONSOLE_PREFIX}/sign-in?next={target}", status_code=303))
        if not reader.may(role):
            return page(request, "forbidden", "Not allowed", status=403,
                        error=f"{reader.name} has role {reader.role}; this page needs {role} or higher")
        return page(request, name, title, subject)

    @router.get("/")
    def home() -> Response:
        return _with_headers(RedirectResponse(f"{CONSOLE_PREFIX}/search", status_code=303))

    @router.get("/sign-in")
    def sign_in_page(request: Request) -> Response:
        return page(request, "sign-in", "Sign in", request.query_params.get("next", ""))

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await _form(request)
        refused = _csrf_refusal(request, form)
        if refused is not None:
            return page(request, "sign-in", "Sign in", status=403, error=refused)
        token = form.get("token", "")
        reader = authenticate(token)
        if reader is None:
            return page(request, "sign-in", "Sign in", form.get("next", ""), status=401,
                        error="unknown token; ask an admin for a token in PROVLINE_API__TOKENS")
        request.state.reader = reader  # so the access log names who signed in
        target = form.get("next", "")
        if not target.startswith(CONSOLE_PREFIX + "/"):  # never redirect off the console
            target = f"{CONSOLE_PREFIX}/search"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request),
                            path="/")
        _set_csrf_cookie(response, request, new_csrf_token())  # a fresh token for the signed-in session
        return _with_headers(response)

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        refused = _csrf_refusal(request, await _form(request))
        if refused is not None:
            return page(request, "sign-in", "Sign in", status=403, error=refused)
        response = RedirectResponse(f"{CONSOLE_PREFIX}/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
        return _with_headers(response)

    @router.get("/search")
    def search(request: Request) -> Response:
        return signed_in_page(request, "search", "Search predictions")

    @router.get("/predictions/{prediction_id}")
    def prediction(request: Request, prediction_id: str) -> Response:
        return signed_in_page(request, "prediction", f"Prediction {prediction_id}", prediction_id)

    @router.get("/lineage")
    def lineage(request: Request) -> Response:
        return signed_in_page(request, "lineage", "Lineage explorer", request.query_params.get("node", ""))

    @router.get("/models/{model_name}")
    def model(request: Request, model_name: str) -> Response:
        return signed_in_page(request, "model", f"Model {model_name}", model_name)

    @router.get("/access-log")
    def access_log(request: Request) -> Response:
        return signed_in_page(request, "access-log", "Access log", role="admin")

    @router.get("/static/{path:path}")
    def static_file(path: str) -> Response:
        data = static.get(path)
        if data is None:
            return _with_headers(Response("no such console file", status_code=404, media_type="text/plain"))
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if path.endswith(".LICENSE"):
            media_type = "text/plain"
        response = Response(data, media_type=media_type)
        _with_headers(response).headers["Cache-Control"] = "no-cache"
        return response

    return router


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST, each field's first value (bodies over MAX_FORM_BYTES: none)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}


def _csrf_refusal(request: Request, form: Mapping[str, str]) -> str | None:
    host = request.headers.get("host", "")
    return csrf_problem(cookie_token=request.cookies.get(CSRF_COOKIE), form_token=form.get(CSRF_FIELD),
                        origin=request.headers.get("origin"), expected_origin=own_origin(request.url.scheme, host))
