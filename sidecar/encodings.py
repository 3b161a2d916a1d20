"""Bodies sent with a ``Content-Encoding`` (gzip, deflate, br), decoded for parsing, never past a limit.

Pure functions; no I/O. The proxy relays the bytes as they came and the events record their size
and digest; only what is parsed for features is decoded. A small body may decode to a huge one
(a decompression bomb): decoding stops once the output passes ``limit`` bytes, so a body holds at
most about twice ``limit`` bytes while it is decoded, and is then not parsed, with the reason.
"""

from __future__ import annotations

import zlib

import brotli

# Encodings that leave the bytes as they are.
_IDENTITY = frozenset({"", "identity"})
SUPPORTED = ("gzip", "deflate", "br")
_BROTLI_STEP = 64 * 1024


class NotDecoded(ValueError):
    """A body that cannot be decoded within the limit; the message says why, for the event's parse error."""


class DecodedTooLarge(NotDecoded):
    """The body decodes to more than the limit."""


def decode_content(body: bytes, content_encoding: str | None, *, limit: int) -> bytes:
    """``body`` with its content codings undone, last applied first (``Content-Encoding: gzip, br``
    is br of gzip); at most ``limit`` bytes. Raises :class:`NotDecoded` for an unsupported coding,
    bytes that are not that coding, or output past ``limit``."""
    if content_encoding is None:
        return body
    codings = [coding.strip().lower() for coding in content_encoding.split(",")]
    for coding in reversed(codings):
        if coding in _IDENTITY:
            continue
        if coding in ("gzip", "x-gzip"):
            body = _zlib(body, zlib.MAX_WBITS | 16, coding, limit, members=True)
        elif coding == "deflate":  # RFC 9110: zlib-wrapped; some servers send raw deflate
            try:
                body = _zlib(body, zlib.MAX_WBITS, coding, limit, members=False)
            except DecodedTooLarge:
                raise
            except NotDecoded:
                body = _zlib(body, -zlib.MAX_WBITS, coding, limit, members=False)
        elif coding == "br":
            body = _brotli(body, limit)
        else:
            raise NotDecoded(f"content encoding {coding!r} is not supported (only {', '.join(SUPPORTED)} are); "
                             "the body is recorded by size and digest, not parsed")
    return body


def _too_large(coding: str, limit: int) -> DecodedTooLarge:
    return DecodedTooLarge(f"{coding} body decodes to more than max_parse_bytes {limit} bytes; not parsed (a "
                           "decompression bomb, or a body that needs PROVLINE_CAPTURE__MAX_PARSE_BYTES raised)")


def _zlib(body: bytes, wbits: int, coding: str, limit: int, *, members: bool) -> bytes:
    """zlib, raw deflate or gzip (``members``: one gzip member after another, as gzip allows)."""
    out = bytearray()
    decoder = zlib.decompressobj(wbits)
    data = body
    try:
        while True:
            out += decoder.decompress(data, limit + 1 - len(out))  # never 0, which would mean "no limit"
            if len(out) > limit:
                raise _too_large(coding, limit)
            if not decoder.eof:
                raise NotDecoded(f"{coding} body ends before its compressed stream does (truncated); not parsed")
            data = decoder.unused_data
            if not members or not data.strip(b"\x00"):  # trailing zero padding is tolerated, as gzip(1) does
                return bytes(out)
            decoder = zlib.decompressobj(wbits)
    except zlib.error as exc:
        raise NotDecoded(f"body is not valid {coding}: {exc}; not parsed") from exc


def _brotli(body: bytes, limit: int) -> bytes:
    out = bytearray()
    decoder = brotli.Decompressor()
    try:  # in steps: brotli's output buffer doubles past its limit, a step bounds the overshoot
        step = decoder.process(body, output_buffer_limit=min(_BROTLI_STEP, limit + 1))
        out += step
        while step and len(out) <= limit and not decoder.is_finished():  # the rest of the input is buffered inside
            step = decoder.process(b"", output_buffer_limit=min(_BROTLI_STEP, limit + 1 - len(out)))
            out += step
        if len(out) > limit:
            raise _too_large("br", limit)
        if not decoder.is_finished():
            raise NotDecoded("br body ends before its compressed stream does (truncated); not parsed")
    except brotli.error as exc:
        raise NotDecoded(f"body is not valid br: {exc}; not parsed") from exc
    return bytes(out)
