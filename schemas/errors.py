"""Errors raised by the event contract.

    SchemaError                 base class
    ├── UnknownSchemaError      the bytes name a writer schema provline does not have
    ├── CorruptEventError       the bytes are not a well-formed provline event
    └── InvalidEventError       a record does not fit its schema (on encode)
"""

from __future__ import annotations


class SchemaError(ValueError):
    """Base class for every error of the event contract."""


class UnknownSchemaError(SchemaError):
    """The writer schema (by fingerprint or registry id) is not known."""


class CorruptEventError(SchemaError):
    """The bytes do not decode as a provline event."""


TOMBSTONE = "empty message value (a tombstone?); provline events are never empty"  # the error for one


class InvalidEventError(SchemaError):
    """A record does not match its Avro schema."""
