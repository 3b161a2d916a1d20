"""Compressed bodies are decoded for parsing, bounded (issue 14, item 4); the event keeps the relayed bytes."""

from __future__ import annotations

import gzip
import hashlib
import json
import tracemalloc
import zlib

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from provline.sidecar.encodings import DecodedTooLarge, NotDecoded, decode_content
from provline.sidecar.events import Capture, describe_body
from provline.sidecar.payload import NotParsed, ObservedBody, parse_json
from provline.sidecar.policy import FieldRules, Redactor

LIMIT = 1 << 20
REPLY = json.dumps({"model_name": "iris", "model_version": "v1", "outputs": [
    {"name": "predict", "shape": [300, 1], "datatype": "INT64", "data": [i % 3 for i in range(300)]}]}).encode()


def raw_deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return encoder.compress(data) + encoder.flush()


ENCODED = {
    "gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
    "GZip ": gzip.compress, "identity": lambda data: data,
}


@pytest.mark.parametrize("coding", sorted(ENCODED))
def test_each_coding_decodes(coding: str) -> None:
    assert decode_content(ENCODED[coding](REPLY), coding, limit=LIMIT) == REPLY


def test_raw_deflate_several_gzip_members_and_stacked_codings_decode() -> None:
    assert decode_content(raw_deflate(REPLY), "deflate", limit=LIMIT) == REPLY
    assert decode_content(gzip.compress(b"[1,") + gzip.compress(b"2]"), "gzip", limit=LIMIT) == b"[1,2]"
    assert decode_content(brotli.compress(gzip.compress(REPLY)), "gzip, br", limit=LIMIT) == REPLY
    assert decode_content(REPLY, None, limit=LIMIT) == REPLY


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_decompression_bomb_stops_at_the_limit_and_says_so(coding: str) -> None:
    bomb = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[coding](b"0" * (64 << 20))
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(DecodedTooLarge, match=f"{coding} body decodes to more than max_parse_bytes {LIMIT}"):
            decode_content(bomb, coding, limit=LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * LIMIT, f"decoding a 64 MiB bomb held {peak} bytes"


@pytest.mark.parametrize(("body", "coding", "reason"), [
    (gzip.compress(REPLY)[:-20], "gzip", "truncated"),
    (brotli.compress(REPLY)[:-3], "br", "truncated"),
    (b"not compressed", "gzip", "not valid gzip"),
    (b"not compressed", "br", "not valid br"),
    (b"x", "zstd", "'zstd' is not supported"),
])
def test_bodies_that_do_not_decode_are_named(body: bytes, coding: str, reason: str) -> None:
    with pytest.raises(NotDecoded, match=reason):
        decode_content(body, coding, limit=LIMIT)


@given(st.binary(max_size=300), st.sampled_from(["gzip", "deflate", "br", "gzip, br"]))
def test_decoding_any_bytes_never_raises_anything_else(body: bytes, coding: str) -> None:
    try:
        decode_content(body, coding, limit=1000)
    except NotDecoded:
        pass


CAPTURE = Capture(max_capture_bytes=64, max_parse_bytes=LIMIT)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_compressed_reply_gives_its_outputs_and_version_and_keeps_its_relayed_bytes(coding: str) -> None:
    relayed = ENCODED[coding](REPLY)
    observed = ObservedBody.whole(relayed)
    record = describe_body(observed, "application/json", mode="full", rules=FieldRules(), redactor=Redactor(None),
                           capture=CAPTURE, role="output", content_encoding=coding)
    assert record.error is None and record.model_version == "v1"
    assert record.row_count == 300 and record.rows[:2] == [{"predict": 0.0}, {"predict": 1.0}]
    assert record.body == relayed[:64]  # full mode captures the bytes as relayed
    assert (observed.size, observed.digest) == (len(relayed), hashlib.sha256(relayed).hexdigest())
    redacted = describe_body(observed, "application/json", mode="redacted", rules=FieldRules.of(drop=["x"]),
                             redactor=Redactor(b"k"), capture=Capture(1 << 16, LIMIT), role="output",
                             content_encoding=coding)
    assert json.loads(redacted.body or b"") == json.loads(REPLY)  # redacted mode stores the decoded document


def test_a_bomb_is_not_parsed_and_the_reason_is_recorded() -> None:
    bomb = gzip.compress(b"[" + b"0," * (4 << 20) + b"0]")
    document = parse_json(bomb, "application/json", max_parse_bytes=LIMIT, content_encoding="gzip")
    assert isinstance(document, NotParsed) and "decodes to more than max_parse_bytes" in document.error
    record = describe_body(ObservedBody.whole(bomb), "application/json", mode="full", rules=FieldRules(),
                           redactor=Redactor(None), capture=CAPTURE, role="output", content_encoding="gzip")
    assert record.rows == [] and record.row_count == 0 and "decompression bomb" in (record.error or "")
    compressed_past_the_limit = parse_json(gzip.compress(REPLY), None, max_parse_bytes=100, content_encoding="gzip")
    assert isinstance(compressed_past_the_limit, NotParsed)
