"""Hash chains over events: each producer session links its events by SHA-256.

``hash = SHA-256(Avro binary of the event with hash="" and signature=null)``, in the schema the
producer wrote it with; the encoding includes ``prev_hash``, so changing, removing or reordering
any event breaks the chain from that event on. With a signing key, ``signature`` is the Ed25519
signature of the ASCII hex ``hash``. :class:`HashChain` is not thread-safe: the emitter seals
under its own lock.

A verifier recomputes the hash from the bytes as written (:func:`body_digest`), never by encoding
the decoded event again: after a schema revision, an event's old bytes still hash to its hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from provline.schemas.errors import SchemaError
from provline.schemas.serde import Catalog


class SigningKeyError(SchemaError):
    """A signing or verification key could not be read."""


def _key_bytes(text: str, what: str) -> bytes | None:
    """Raw 32-byte key from base64, or None when ``text`` is PEM."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return None
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SigningKeyError(f"{what} is neither PEM nor base64: {exc}") from exc
    if len(raw) != 32:
        raise SigningKeyError(f"{what} decodes to {len(raw)} bytes; an Ed25519 key is 32 bytes (or PEM)")
    return raw


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or base64 of its 32 raw bytes."""
    raw = _key_bytes(text, "the signing key")
    if raw is not None:
        return Ed25519PrivateKey.from_private_bytes(raw)
    key = serialization.load_pem_private_key(text.strip().encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key is a {type(key).__name__}; provline signs with Ed25519")
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or base64 of its 32 raw bytes."""
    raw = _key_bytes(text, "the verification key")
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    key = serialization.load_pem_public_key(text.strip().encode())
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"the verification key is a {type(key).__name__}; provline signs with Ed25519")
    return key


def signature_valid(public_key: Ed25519PublicKey, value: dict[str, Any]) -> bool:
    """Whether ``value["signature"]`` is a valid signature of ``value["hash"]``."""
    return signature_of_hash_valid(public_key, str(value.get("hash")), value.get("signature"))


@dataclass(frozen=True)
class SealedBody:
    """What an event's Avro body says of its seal, and the digest its bytes give."""

    declared_hash: str  # the ``hash`` field as written
    signature: bytes | None
    computed_hash: str  # SHA-256 of the body with hash="" and signature=null

    @property
    def intact(self) -> bool:
        return self.declared_hash == self.computed_hash


def body_digest(body: bytes) -> SealedBody:
    """The seal of an event from its Avro body as written (any schema revision: the envelope leads every
    schema). Raises ValueError when the body is too short or malformed where the envelope should be."""
    try:
        offset = _hash_offset(body)
        length, after_length = _read_long(body, offset)
        declared = body[after_length:after_length + length]
        end = after_length + length
        branch = body[end]
        signature: bytes | None = None
        if branch == 0:
            rest = end + 1
        elif branch == 2:
            size, start = _read_long(body, end + 1)
            signature = bytes(body[start:start + size])
            rest = start + size
            if len(signature) != size:
                raise IndexError("signature cut short")
        else:
            raise ValueError(f"signature union branch {branch} is neither null nor bytes")
        if len(declared) != length or rest > len(body):
            raise IndexError("hash cut short")
    except IndexError as exc:
        raise ValueError(f"the event's envelope is cut short or malformed: {exc}") from exc
    unsealed = body[:offset] + b"\x00\x00" + body[rest:]  # an empty hash string, a null signature
    return SealedBody(declared.decode("ascii", errors="replace"), signature, hashlib.sha256(unsealed).hexdigest())


def signature_of_hash_valid(public_key: Ed25519PublicKey, digest: str, signature: bytes | None) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of the ASCII hex ``digest``."""
    if not signature:
        return False
    try:
        public_key.verify(signature, digest.encode())
    except InvalidSignature:
        return False
    return True


def _hash_offset(body: bytes) -> int:
    """Byte offset of ``hash`` in an event's Avro body: after event_id, event_time, producer's four
    strings and the prev_hash union, the envelope fields every event starts with."""
    offset = 0
    for index in range(2 + 4 + 1):  # event_id, event_time, producer.{name, host, version, session_id}, prev_hash
        shift = value = 0
        while True:  # an Avro varint, zigzag encoded; inlined: this runs for every event emitted
            byte = body[offset]
            offset += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        if index == 6:  # prev_hash: branch 0 is null, branch 1 a string (its length and bytes follow)
            if value == 2:
                length, offset = _read_long(body, offset)
                offset += length
        elif index != 1:  # every field but event_time (a long) is a string: skip its bytes
            offset += value >> 1
    return offset


def _read_long(body: bytes, offset: int) -> tuple[int, int]:
    """(value, offset after it) of the non-negative Avro long at ``offset``."""
    shift = value = 0
    while True:
        byte = body[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value >> 1, offset
        shift += 7


def _avro_bytes_field(data: bytes) -> bytes:
    zigzag = len(data) << 1
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out) + data


@dataclass
class HashChain:
    """The running chain of one producer session; ``count`` is how many events it has sealed."""

    catalog: Catalog
    last_hash: str | None = None
    signer: Ed25519PrivateKey | None = None
    count: int = 0

    def position(self) -> tuple[str | None, int]:
        """Where the chain stands (last hash, count), for :meth:`rewind`."""
        return self.last_hash, self.count

    def rewind(self, position: tuple[str | None, int]) -> None:
        """Take the events sealed since ``position`` back out of the chain (dropped before anyone saw them)."""
        self.last_hash, self.count = position

    def seal_encode(self, kind: str, value: dict[str, Any]) -> bytes:
        """Set ``prev_hash``, ``hash`` (and ``signature``) on ``value`` in place, advance the chain, and
        return the sealed event's Avro body, encoding it only once.

        The body is encoded with ``hash=""`` and ``signature=null`` (the bytes the hash covers); the
        hash and signature are then spliced in where the envelope puts them, which gives exactly
        the bytes that encoding the sealed event again would.
        """
        value["prev_hash"] = self.last_hash
        value["hash"] = ""
        value["signature"] = None
        unsealed = self.catalog.encode_body(kind, value)
        digest = hashlib.sha256(unsealed).hexdigest()
        value["hash"] = digest
        signature = b"\x00"
        if self.signer is not None:
            value["signature"] = self.signer.sign(digest.encode())
            signature = b"\x02" + _avro_bytes_field(value["signature"])
        self.last_hash = digest
        self.count += 1
        offset = _hash_offset(unsealed)
        # at offset: 0x00 (empty hash string), 0x00 (null signature branch)
        return unsealed[:offset] + _avro_bytes_field(digest.encode()) + signature + unsealed[offset + 2 :]


def merkle_root(leaves: list[bytes]) -> bytes:
    """Root of a binary SHA-256 Merkle tree over ``leaves`` (each hashed first), in the given order; an odd
    node is paired with itself. The root of no leaves is SHA-256 of nothing."""
    level = [hashlib.sha256(leaf).digest() for leaf in leaves]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]
