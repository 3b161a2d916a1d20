"""Where the console's session cookie counts, and when a sign-in or sign-out may go ahead (pure rules)."""

from __future__ import annotations

import pytest

from provline.sink.console import render
from provline.sink.console.auth import cookie_accepted, csrf_problem, new_csrf_token, own_origin

SAME = {"sec-fetch-site": "same-origin"}


@pytest.mark.parametrize(("method", "path", "headers", "accepted"), [
    ("GET", "/console/search", {}, True),
    ("POST", "/console/sign-in", {}, True),  # and there the CSRF check applies
    ("GET", "/console", {}, True),
    ("GET", "/consolex/search", {}, False),
    ("GET", "/v1/traces/p1", SAME, True),
    ("HEAD", "/v1/traces/p1", SAME, True),
    ("GET", "/v1/traces/p1", {"sec-fetch-site": "SAME-ORIGIN"}, True),
    ("GET", "/v1/traces/p1", {}, False),  # not a browser's same-origin request
    ("GET", "/v1/traces/p1", {"sec-fetch-site": "same-site"}, False),
    ("GET", "/v1/traces/p1", {"sec-fetch-site": "cross-site"}, False),
    ("GET", "/v1/traces/p1", {"sec-fetch-site": "none"}, False),  # typed into the address bar
    ("POST", "/v1/sql", SAME, False),
    ("POST", "/v1/feedback", SAME, False),
    ("POST", "/v1/verify", SAME, False),
    ("DELETE", "/v1/traces/p1", SAME, False),
    ("GET", "/metrics", SAME, False),
])
def test_the_cookie_counts_on_the_console_and_on_same_origin_reads_of_v1_only(
    method: str, path: str, headers: dict[str, str], accepted: bool,
) -> None:
    assert cookie_accepted(method, path, headers) is accepted


def test_csrf_needs_this_origin_and_the_matching_token() -> None:
    token = new_csrf_token()
    origin = own_origin("http", "127.0.0.1:8700")
    assert origin == "http://127.0.0.1:8700"
    ok = {"cookie_token": token, "form_token": token, "origin": "http://127.0.0.1:8700", "expected_origin": origin}
    assert csrf_problem(**ok) is None
    assert csrf_problem(**{**ok, "origin": "HTTP://127.0.0.1:8700"}) is None
    for change, says in (({"origin": "http://evil.example"}, "not this console's origin"),
                         ({"origin": None}, "Origin (none)"), ({"origin": "null"}, "Origin null"),
                         ({"origin": "https://127.0.0.1:8700"}, "not this console's origin"),
                         ({"form_token": token + "x"}, "does not match"), ({"form_token": None}, "does not match"),
                         ({"cookie_token": None}, "does not match"), ({"cookie_token": "", "form_token": ""}, "match")):
        problem = csrf_problem(**{**ok, **change})
        assert problem is not None and says in problem, change


def test_tokens_are_fresh_and_long() -> None:
    tokens = {new_csrf_token() for _ in range(100)}
    assert len(tokens) == 100 and min(len(t) for t in tokens) >= 40


def test_render_escapes_values_but_not_its_own_markup() -> None:
    page = render('<p data-x="$x">$y</p>$body', {"x": '"><script>', "y": "<b>&"}, markup={"body": "<main></main>"})
    assert page == '<p data-x="&quot;&gt;&lt;script&gt;">&lt;b&gt;&amp;</p><main></main>'
