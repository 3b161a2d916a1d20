"""Errors raised by the sink.

    SinkError                   base class
    ├── StoreConfigError        the ClickHouse URL cannot be used (bad scheme, missing path)
    ├── MigrationError          a DDL file cannot be applied, or changed after it was applied
    ├── ReadOnlySqlError        a statement sent to the read-only SQL endpoint was refused
    ├── DeadLetterError         undecodable messages could not be written to the dead-letter topic
    └── BundleError             no evidence bundle can be built for the subject asked for
"""

from __future__ import annotations


class SinkError(Exception):
    """Base class for every error of the sink."""


class StoreConfigError(SinkError, ValueError):
    """PROVLINE_STORE__URL does not name a usable store."""


class MigrationError(SinkError):
    """A migration file could not be applied."""


class ReadOnlySqlError(SinkError, ValueError):
    """Only a single read statement is accepted."""


class DeadLetterError(SinkError):
    """The dead-letter topic did not accept a batch's undecodable messages; the batch is not committed."""


class BundleError(SinkError, ValueError):
    """The store holds nothing about the subject, or the bundle format is unknown."""
