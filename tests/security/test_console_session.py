"""The console's sign-in: the token in an HttpOnly, SameSite=Strict cookie, CSRF-safe, accepted only where
it may be, every page logged, and a Content-Security-Policy that allows this origin alone.

Through the real audit API (``create_api`` over a seeded chDB store), as ``provline serve`` builds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from provline.sink.console import CONTENT_SECURITY_POLICY
from provline.sink.console.auth import CSRF_COOKIE, SESSION_COOKIE
from tests.security.sql_store import TOKENS, AuditApi, audit_api

ORIGIN = "http://testserver"  # TestClient's own origin
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def api(chdb_path: str) -> Iterator[AuditApi]:
    with audit_api(chdb_path) as api:
        yield api


def csrf_of(http: TestClient) -> str:
    """The sign-in page's CSRF token (its form field), which it also sets as a cookie."""
    page = http.get("/console/sign-in")
    assert page.status_code == 200
    [field] = set(re.findall(r'name="csrf_token" value="([^"]+)"', page.text))  # sign-in and sign-out forms
    assert http.cookies.get(CSRF_COOKIE) == field
    return field


def sign_in(http: TestClient, reader: str, **overrides: Any) -> Any:
    form = {"token": TOKENS[reader][0], "csrf_token": csrf_of(http), "next": "/console/search"}
    headers = {"Origin": ORIGIN}
    headers.update(overrides.pop("headers", {}))
    form.update(overrides)
    return http.post("/console/sign-in", data=form, headers=headers, follow_redirects=False)


def set_cookie_headers(reply: Any) -> list[str]:
    return reply.headers.get_list("set-cookie")


def access_rows(api: AuditApi, path: str) -> list[tuple[Any, ...]]:
    return api.store.query(
        "SELECT reader, role, method, status, allowed FROM access_log WHERE path = {p:String} ORDER BY time",
        parameters={"p": path},
    ).result_rows


def test_sign_in_keeps_the_token_in_an_httponly_samesite_strict_cookie(api: AuditApi) -> None:
    reply = sign_in(api.http, "ann")
    assert reply.status_code == 303 and reply.headers["location"] == "/console/search"
    [session] = [c for c in set_cookie_headers(reply) if c.startswith(SESSION_COOKIE + "=")]
    attributes = {part.strip().lower() for part in session.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain HTTP here; over TLS the cookie is Secure
    page = api.http.get("/console/search")
    assert page.status_code == 200 and 'data-reader="ann"' in page.text and 'data-role="auditor"' in page.text


def test_sign_in_is_refused_without_the_csrf_token_or_from_another_origin(api: AuditApi) -> None:
    assert sign_in(api.http, "ann", csrf_token="forged").status_code == 403
    assert sign_in(api.http, "ann", headers={"Origin": "http://evil.example"}).status_code == 403
    assert sign_in(api.http, "ann", headers={"Origin": ""}).status_code == 403
    assert SESSION_COOKIE not in api.http.cookies
    assert api.http.get("/console/search", follow_redirects=False).status_code == 303  # still signed out


def test_an_unknown_token_is_refused_and_pages_send_the_signed_out_to_sign_in(api: AuditApi) -> None:
    reply = sign_in(api.http, "ann", token="n" * 32)
    assert reply.status_code == 401 and "unknown token" in reply.text
    page = api.http.get("/console/predictions/p1", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fpredictions%2Fp1"


def test_the_cookie_is_accepted_for_same_origin_reads_of_the_api_only(api: AuditApi) -> None:
    assert sign_in(api.http, "root").status_code == 303
    assert api.http.get("/v1/runs", headers=SAME_ORIGIN).status_code == 200
    # a cross-site or scripted request carrying the cookie (no Sec-Fetch-Site: same-origin) is not signed in
    assert api.http.get("/v1/runs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 401
    assert api.http.get("/v1/runs").status_code == 401
    # never for a write or a POST, even from the same origin
    assert api.http.post("/v1/sql", json={"sql": "SELECT 1"}, headers=SAME_ORIGIN).status_code == 401
    assert api.http.post("/v1/verify", json={}, headers=SAME_ORIGIN).status_code == 401
    assert api.http.post("/v1/feedback", json={}, headers=SAME_ORIGIN).status_code == 401
    # a bearer token wins over the cookie: the API's own authentication is unchanged
    viewer = {"Authorization": f"Bearer {TOKENS['vic'][0]}", **SAME_ORIGIN}
    assert api.http.get("/v1/access-log", headers=viewer).status_code == 403


def test_roles_are_the_apis(api: AuditApi) -> None:
    assert sign_in(api.http, "vic").status_code == 303
    assert api.http.get("/console/access-log").status_code == 403
    assert api.http.get("/v1/access-log", headers=SAME_ORIGIN).status_code == 403
    assert api.http.get("/v1/traces/p1?raw=true", headers=SAME_ORIGIN).status_code == 403
    assert sign_in(api.http, "root").status_code == 303
    assert api.http.get("/console/access-log").status_code == 200
    assert api.http.get("/v1/access-log", headers=SAME_ORIGIN).status_code == 200


def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(api: AuditApi) -> None:
    assert sign_in(api.http, "ann").status_code == 303
    token = api.http.cookies[CSRF_COOKIE]
    refused = api.http.post("/console/sign-out", data={"csrf_token": "x"}, headers={"Origin": ORIGIN},
                            follow_redirects=False)
    assert refused.status_code == 403
    assert api.http.get("/console/search").status_code == 200  # still signed in
    done = api.http.post("/console/sign-out", data={"csrf_token": token}, headers={"Origin": ORIGIN},
                         follow_redirects=False)
    assert done.status_code == 303
    assert any(c.startswith(SESSION_COOKIE + '=""') or "Max-Age=0" in c for c in set_cookie_headers(done))
    assert api.http.get("/console/search", follow_redirects=False).status_code == 303


def test_a_sign_in_redirect_never_leaves_the_console(api: AuditApi) -> None:
    reply = sign_in(api.http, "ann", next="https://evil.example/phish")
    assert reply.status_code == 303 and reply.headers["location"] == "/console/search"


@pytest.mark.parametrize("path", ["/console/sign-in", "/console/search", "/console/predictions/p1",
                                  "/console/lineage", "/console/models/churn", "/console/static/console.js",
                                  "/console/static/vendor/cytoscape-3.35.0.min.js"])
def test_every_console_answer_has_a_csp_that_allows_this_origin_only_and_no_inline_script(
    api: AuditApi, path: str,
) -> None:
    sign_in(api.http, "ann")
    reply = api.http.get(path)
    assert reply.status_code == 200
    policy = reply.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    for name in ("script-src", "style-src", "connect-src", "font-src"):
        assert directives[name] == ["'self'"], name  # no other origin, no 'unsafe-inline', no 'unsafe-eval'
    assert directives["frame-ancestors"] == ["'none'"]
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_pages_have_no_inline_script_and_load_nothing_from_another_origin(api: AuditApi) -> None:
    sign_in(api.http, "root")
    for path in ("/console/sign-in", "/console/search", "/console/predictions/p1", "/console/lineage",
                 "/console/models/churn", "/console/access-log"):
        text = api.http.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path  # every script is a file
        assert not re.search(r"\son[a-z]+=", text), path  # no inline event handlers
        assert not re.search(r"\sstyle=", text), path
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', text):
            assert url.startswith("/") or url == "#", (path, url)


def test_a_subject_with_markup_is_escaped(api: AuditApi) -> None:
    sign_in(api.http, "ann")
    text = api.http.get('/console/predictions/"><img src=x>').text
    assert "<img src=x>" not in text and "&quot;&gt;&lt;img src=x&gt;" in text


def test_every_console_request_is_in_the_access_log(api: AuditApi) -> None:
    api.http.get("/console/search", follow_redirects=False)  # signed out: a redirect
    sign_in(api.http, "ann")
    api.http.get("/console/search")
    api.http.get("/console/predictions/p1")
    api.http.get("/v1/traces/p1", headers=SAME_ORIGIN)
    assert access_rows(api, "/console/search")[0] == ("", "", "GET", 303, True)
    assert ("ann", "auditor", "GET", 200, True) in access_rows(api, "/console/search")
    assert access_rows(api, "/console/predictions/p1") == [("ann", "auditor", "GET", 200, True)]
    assert access_rows(api, "/v1/traces/p1") == [("ann", "auditor", "GET", 200, True)]
    # the sign-in row names who signed in: the token came in the form, not in a cookie or header
    assert [row[:4] for row in access_rows(api, "/console/sign-in")] == [("", "", "GET", 200),
                                                                         ("ann", "auditor", "POST", 303)]
    assert access_rows(api, "/console/static/console.js") == []  # no page asked for it here
    api.http.get("/console/static/console.js")
    assert access_rows(api, "/console/static/console.js") == [("ann", "auditor", "GET", 200, True)]


def test_a_refused_sign_in_is_logged_with_no_reader(api: AuditApi) -> None:
    assert sign_in(api.http, "ann", token="not-a-token").status_code == 401
    assert access_rows(api, "/console/sign-in") == [("", "", "GET", 200, True), ("", "", "POST", 401, False)]


def test_the_vendored_libraries_and_their_licences_are_served(api: AuditApi) -> None:
    served = {"vendor/cytoscape-3.35.0.min.js": "javascript", "vendor/uPlot-1.6.32.iife.min.js": "javascript",
              "vendor/uPlot-1.6.32.min.css": "text/css", "vendor/cytoscape-3.35.0.LICENSE": "text/plain",
              "vendor/uPlot-1.6.32.LICENSE": "text/plain"}
    for name, media in served.items():
        reply = api.http.get(f"/console/static/{name}")
        assert reply.status_code == 200 and media in reply.headers["content-type"], name
    assert api.http.get("/console/static/../api.py").status_code == 404
    assert api.http.get("/console/static/nothing.js").status_code == 404


def test_over_tls_the_cookies_are_secure(api: AuditApi) -> None:
    with TestClient(api.http.app, base_url="https://testserver") as https:
        form = {"token": TOKENS["ann"][0], "csrf_token": csrf_of(https), "next": "/console/search"}
        reply = https.post("/console/sign-in", data=form, headers={"Origin": "https://testserver"},
                           follow_redirects=False)
    assert reply.status_code == 303
    cookies = set_cookie_headers(reply)
    assert {c.split("=")[0] for c in cookies} == {SESSION_COOKIE, CSRF_COOKIE}
    for cookie in cookies:
        assert "secure" in {part.strip().lower() for part in cookie.split(";")}, cookie
