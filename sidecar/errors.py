"""Errors of the sidecar.

    SidecarError              base class
    ├── StartupError          the sidecar could not start or stopped on its own; raised by run_sidecar
    │   └── PolicyError       the capture policy file is missing, invalid, or needs a key that is not set
    ├── UpstreamError         the model server gave no usable response; becomes the client's reply
    │   ├── UpstreamUnreachable   502: refused, reset, closed early, malformed response
    │   └── UpstreamTimeout       504: no connection or no bytes within the configured timeout
    ├── UpstreamAborted       the upstream failed after its status line was passed on: the client's
    │                         connection is cut, the only honest signal left
    └── RedactionError        a body cannot be redacted safely; it is then not captured (never leaves
                              the recorder)

:func:`upstream_error_from` is the one place where the upstream client's errors (see
:mod:`provline.sidecar.upstream`) become ours, and therefore the one place where a failure picks its HTTP status.
"""

from __future__ import annotations


class SidecarError(RuntimeError):
    """Base class for provline sidecar errors."""


class StartupError(SidecarError):
    """The proxy or admin server failed to start or exited without being asked to."""


class PolicyError(StartupError):
    """The capture policy cannot be used; the message names the file, the entry and the fix."""


class UpstreamError(SidecarError):
    """The upstream call failed; ``status`` is what the client receives, ``reason`` what the event records."""

    status: int = 502
    client_message = "upstream unavailable"  # the reason names internal addresses; clients get this

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamUnreachable(UpstreamError):
    status = 502
    client_message = "upstream unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    client_message = "upstream timed out"


class UpstreamAborted(SidecarError):
    """A streamed reply broke off mid-body; raised to the ASGI server so it closes the connection."""


class RedactionError(SidecarError):
    """A body cannot be redacted safely (JSON nested too deep inside a string); it is not captured."""


def upstream_error_from(exc: BaseException, *, upstream: str) -> UpstreamError | None:
    """Our error for a failure of the upstream call, or None when ``exc`` is not an upstream failure.

    Timeouts are checked first: ``TimeoutError`` is also an ``OSError``.
    """
    if isinstance(exc, TimeoutError):  # connect (including the wait for a pooled connection) and read
        detail = str(exc) or type(exc).__name__
        return UpstreamTimeout(f"upstream {upstream} timed out: {detail}")
    if isinstance(exc, OSError):  # refused, reset, closed early, not HTTP (UpstreamProtocolError)
        detail = str(exc) or type(exc).__name__
        return UpstreamUnreachable(f"upstream {upstream} failed: {detail}")
    return None
