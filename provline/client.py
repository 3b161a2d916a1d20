"""The audit API as the command line reaches it: settings (section ``client``) and the HTTP calls.

Every audit command reads through ``provline serve``'s API with a bearer token, so every read is
authorised and lands in the access log, and the embedded store keeps one owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from provline.config import AnchorSettings, ProvlineSettings, Section

DEFAULT_API_URL = "http://127.0.0.1:8700"
DEFAULT_TIMEOUT_S = 30.0


class ApiClientSettings(Section):
    """Where the audit commands find the API, and as whom they ask (section ``client``)."""

    api_url: str = Field(DEFAULT_API_URL, description="URL of `provline serve`'s audit API")
    api_token: SecretStr | None = Field(None, description="bearer token (one of the serve's PROVLINE_API__TOKENS)")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="longest wait for one answer")


class ClientSettings(ProvlineSettings):
    """Settings of the audit commands (``provline trace``, ``sql``, ``verify``, ``anchor``...)."""

    service: ClassVar[str] = "client"

    client: ApiClientSettings = Field(default_factory=ApiClientSettings)
    anchor: AnchorSettings = Field(default_factory=AnchorSettings)


class ApiError(Exception):
    """The API answered with an error status, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class AuditClient:
    """Calls on the audit API; each blocks for at most the configured timeout."""

    url: str
    token: str | None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, settings: ApiClientSettings, *, url: str | None = None) -> AuditClient:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(url or settings.api_url, token, settings.timeout_s)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            response = httpx.request(method, f"{self.url.rstrip('/')}{path}", headers=self._headers(),
                                     timeout=self.timeout_s, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the audit API at {self.url}: {exc}; start it with `provline serve` "
                              "or point --api / PROVLINE_CLIENT__API_URL at it") from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"detail": response.text[:500]}

    def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, JSON body) of a GET; parameters that are None, empty or [] are left out."""
        wanted = {k: v for k, v in (params or {}).items() if v not in (None, "", [])}
        return self._call("GET", path, params=wanted)

    def answer(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON body of a GET that must succeed; ApiError otherwise."""
        status, body = self.get(path, params)
        if status != 200:
            raise ApiError(status, f"audit API answered {status}: {_detail(body)}")
        return body

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        """(status, JSON body) of a POST of ``body`` as JSON."""
        return self._call("POST", path, json=body)

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of one read-only SQL statement (``/v1/sql``), as dicts; ApiError with the API's reason."""
        status, body = self._call("POST", "/v1/sql", json={"sql": sql})
        if status != 200:
            raise ApiError(status, f"audit API answered {status}: {_detail(body)}")
        return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


def _detail(body: Any) -> Any:
    return body.get("detail", body) if isinstance(body, dict) else body
