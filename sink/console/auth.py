"""Who a console request is from, and whether a state-changing one may go ahead. Pure functions.

The console signs a reader in with the same API token the ``/v1`` routes take as a bearer token,
and keeps it in the session cookie (HttpOnly, SameSite=Strict; Secure over TLS). The cookie is
accepted in two places only (:func:`cookie_accepted`):

- the console's own routes (``/console/...``), whose one state-changing requests, sign-in and
  sign-out, must also pass :func:`csrf_problem`: a double-submitted CSRF token (its cookie and the
  form field must match) and an ``Origin`` naming this very origin;
- ``GET``/``HEAD`` on ``/v1/...`` from the console's own pages, which a browser marks
  ``Sec-Fetch-Site: same-origin``. Those routes only read (no state a forged request could change),
  and a page of another origin can neither send the cookie (SameSite=Strict) nor read the answer
  (no CORS). ``POST /v1/sql``, ``/v1/verify`` and ``/v1/feedback`` keep needing a bearer token.

A bearer token in ``Authorization`` always wins; the API's own authentication is unchanged.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping

CONSOLE_PREFIX = "/console"
API_PREFIX = "/v1/"
SESSION_COOKIE = "provline_session"
CSRF_COOKIE = "provline_csrf"
CSRF_FIELD = "csrf_token"
CSRF_TOKEN_BYTES = 32
READ_METHODS = frozenset({"GET", "HEAD"})


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def cookie_accepted(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """Whether the session cookie may stand in for a bearer token on this request (see the module)."""
    if is_console_path(path):
        return True
    return (method.upper() in READ_METHODS and path.startswith(API_PREFIX)
            and headers.get("sec-fetch-site", "").lower() == "same-origin")


def new_csrf_token() -> str:
    return secrets.token_urlsafe(CSRF_TOKEN_BYTES)


def own_origin(scheme: str, host: str) -> str:
    """The origin a page of this server has, from the request's scheme and Host header."""
    return f"{scheme}://{host}".lower()


def csrf_problem(*, cookie_token: str | None, form_token: str | None, origin: str | None, expected_origin: str) -> (
        str | None):
    """Why a state-changing console request must be refused, or None when it may go ahead.

    Both checks must pass: the ``Origin`` header is this server's origin (a browser sends it on every
    POST), and the CSRF token of the form equals the one in its cookie (compared in constant time).
    """
    if not origin or origin.lower() != expected_origin:
        return (f"Origin {origin or '(none)'} is not this console's origin {expected_origin}; "
                "submit the form from the console's own page")
    if not cookie_token or not form_token or not hmac.compare_digest(cookie_token.encode(), form_token.encode()):
        return "the form's CSRF token does not match its cookie; reload the page and submit it again"
    return None
