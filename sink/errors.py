"""Errors raised by the sink.

    SinkError                   base class
    ├── StoreConfigError        the ClickHouse URL cannot be used (bad scheme, missing path)
    ├── MigrationError          a DDL file cannot be applied, or changed after it was applied
    ├── SqlError                a statement sent to the read-only SQL endpoint (/v1/sql) was not answered
    │   ├── ReadOnlySqlError    refused: not one read statement, or it reaches what the role may not
    │   ├── SqlLimitError       refused: it went over a PROVLINE_SQL__ limit
    │   ├── SqlBusyError        the role's SQL session is running another statement; try again later
    │   └── SqlQueryError       the engine could not run it (unknown table or column, bad types...)
    ├── DeadLetterError         undecodable messages could not be written to the dead-letter topic
    ├── BundleError             no evidence bundle can be built for the subject asked for
    ├── OpenLineageModelError   an OpenLineage event does not fit the openlineage-python client's model
    └── PolicyError             the monitoring policy file (performance, alert thresholds) is not valid
"""

from __future__ import annotations


class SinkError(Exception):
    """Base class for every error of the sink."""


class StoreConfigError(SinkError, ValueError):
    """PROVLINE_STORE__URL does not name a usable store."""


class MigrationError(SinkError):
    """A migration file could not be applied."""


class SqlError(SinkError):
    """A statement of the read-only SQL endpoint was not answered."""


class ReadOnlySqlError(SqlError, ValueError):
    """Only one read statement, over the tables the reader's role may read, is accepted."""


class SqlLimitError(SqlError):
    """The engine stopped the statement at a limit, or its answer is over one; the message names the setting."""


class SqlBusyError(SqlError):
    """The role's session runs one statement at a time and is running one now."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SqlQueryError(SqlError, ValueError):
    """The engine refused the statement for a reason of its own (it names it)."""


class DeadLetterError(SinkError):
    """The dead-letter topic did not accept a batch's undecodable messages; the batch is not committed."""


class BundleError(SinkError, ValueError):
    """The store holds nothing about the subject, or the bundle format is unknown."""


class PolicyError(SinkError, ValueError):
    """The monitoring policy file is not valid; the message names the line, the key and the fix."""


class OpenLineageModelError(SinkError, ValueError):
    """An OpenLineage event (JSON) cannot be rebuilt from the openlineage-python client's classes, or is
    not reproduced by them; the message names the JSON path."""
