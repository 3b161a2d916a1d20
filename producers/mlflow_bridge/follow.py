"""``provline mlflow follow``: the import of :mod:`.importer`, again and again, with a promotion guard.

    follower = Follower(reader, emitter, state, guards={"champion": "production"}, check=check, enforce=True)
    follower.run(stop, interval_s=30.0, on_round=print)      # until ``stop`` (a threading.Event) is set

Each round is one incremental :class:`~.importer.MlflowImport` through the same state, so nothing
delivered is sent again and a moved alias gives exactly one Deployment. A tracking server that does
not answer fails the round, not the follower: the next round comes after a backoff
(:func:`round_delay`) and the one after it that works picks up everything missed.

The promotion guard: a move of an alias named in ``guards`` (alias -> the environment whose
promotion policy applies) is held back by the import, and emitted only after ``check`` (the
policy of ``provline promote``, over the facts in the store) judged it:

- passing, its Deployment is emitted as the import would;
- failing, the Deployment is still emitted (MLflow did move the alias: clients loading
  ``models:/<name>@<alias>`` were served that version, and an auditor must see it), its reason
  naming a REJECTED Decision by role :data:`~.mapping.GUARD_ROLE` that is emitted beside it with
  what is missing as rationale; with ``enforce`` the alias is then moved back in MLflow to the
  version it left, recorded as a ROLLBACK Deployment (with the id the next import gives the alias
  standing there, so nothing is sent twice). A first-seen alias has no version to go back to: it is
  rejected, not moved;
- not checkable yet (the store has not got this follower's events within ``store_wait_s``, or
  cannot be asked), it is neither emitted nor remembered, and is checked again next round.

Blocks; not thread-safe (one follower per state file).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from provline.producers.emitter import Emitter
from provline.producers.errors import ProducerError
from provline.producers.mlflow_bridge import mapping
from provline.producers.mlflow_bridge.client import MlflowError, MlflowReader
from provline.producers.mlflow_bridge.importer import AliasMove, ImportReport, ImportState, MlflowImport, Progress
from provline.schemas.events import model_key

log = logging.getLogger("provline.mlflow")

DEFAULT_INTERVAL_S = 30.0
MIN_RETRY_S = 1.0  # the first retry after a failed round waits at least this long
MAX_BACKOFF_S = 60.0  # ...and no retry waits longer (unless the interval itself is longer)
STORE_WAIT_S = 30.0  # the longest wait, before a guard check, for the store to hold what was sent
STORE_POLL_S = 0.5
DELIVERY_TIMEOUT_S = 30.0  # the longest wait, after a round, for the broker to acknowledge its events
STORED_BATCH = 500  # event ids per question to the store


def round_delay(interval_s: float, failures: int, *, max_backoff_s: float = MAX_BACKOFF_S) -> float:
    """Seconds before the next round: ``interval_s`` after a round that worked (``failures`` 0); after
    ``failures`` failed rounds in a row, ``max(interval_s, MIN_RETRY_S)`` doubled for each failure after
    the first, at most ``max(max_backoff_s, interval_s)``. Pure."""
    if failures <= 0:
        return interval_s
    first = max(interval_s, MIN_RETRY_S)
    return min(first * 2 ** min(failures - 1, 32), max(max_backoff_s, interval_s))


def parse_guard(text: str) -> tuple[str, str]:
    """``ALIAS=ENV`` (``champion=production``) as ``(alias, environment)``; ValueError naming the form."""
    alias, equals, environment = text.partition("=")
    if not equals or not alias.strip() or not environment.strip():
        raise ValueError(f"--guard {text!r} is not ALIAS=ENV, e.g. champion=production (the alias, and the "
                         "environment whose promotion policy its moves must meet)")
    return alias.strip(), environment.strip()


class GuardUnavailable(ProducerError):
    """The promotion guard could not judge a move now (the store is behind, or cannot be asked)."""


class PolicyCheck(Protocol):
    """What the guard asks the store; both calls block, and raise GuardUnavailable when it cannot answer."""

    def stored(self, event_ids: list[str]) -> set[str]:
        """Which of ``event_ids`` the store holds."""
        ...

    def missing(self, model_name: str, version: str, environment: str) -> list[str]:
        """What the promotion policy for ``environment`` requires of the version that is not recorded."""
        ...


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one alias move, and what followed from it."""

    model_name: str
    alias: str
    version: str
    previous_version: str | None
    environment: str
    missing: list[str]
    decision_id: str | None = None
    rolled_back: bool = False
    not_rolled_back: str | None = None  # why a rejected move was left in place

    @property
    def passed(self) -> bool:
        return not self.missing


@dataclass
class Round:
    """One round: its number, the import's report (None when it failed before reading anything), the
    failure, the guard's verdicts, and the moves left for the next round."""

    number: int
    report: ImportReport | None = None
    error: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    delivered: bool = True
    failures: int = 0  # failed rounds in a row, this one included
    next_in_s: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.report.sent.values()) if self.report is not None else 0


class Follower:
    """Runs rounds of the import into one emitter (one producer session) and one state."""

    def __init__(
        self, reader: MlflowReader, emitter: Emitter, state: ImportState, *, experiments: list[str] | None = None,
        guards: dict[str, str] | None = None, check: PolicyCheck | None = None, enforce: bool = False,
        store_wait_s: float = STORE_WAIT_S, progress: Progress | None = None,
    ) -> None:
        self.guards = dict(guards or {})
        if self.guards and check is None:
            raise ValueError("a promotion guard needs a PolicyCheck")
        self.reader, self.emitter, self.state, self.check = reader, emitter, state, check
        self.experiments = list(experiments or [])
        self.enforce = enforce
        self.store_wait_s = store_wait_s
        self.progress = progress
        self.rounds = 0
        self.sent_total = 0
        self._unconfirmed: set[str] = set()  # ids this follower sent that the store was not yet seen to hold
        self._pending_rollbacks: dict[tuple[str, str], AliasMove] = {}  # rejected moves MLflow refused to undo
        self._first_seen: dict[str, datetime] = {}  # held moves' Deployment ids -> when a round first saw them

    def round(self) -> Round:
        """One incremental import, the guard's checks of the moves it held, and the rollbacks; never raises
        MlflowError (the Round carries it). What was emitted is remembered in the state even when the
        round failed half-way: it is the emitter's to deliver, and must not be sent again."""
        self.rounds += 1
        outcome = Round(self.rounds)
        importer = MlflowImport(self.reader, self.emitter, self.state, experiments=self.experiments,
                                progress=self.progress, hold_aliases=set(self.guards))
        try:
            outcome.report = importer.run()
            self._retry_rollbacks(importer, outcome)
            for move in outcome.report.held:
                self._guard(importer, move, outcome)
        except MlflowError as exc:
            outcome.error = str(exc)
            outcome.report = importer.report
        finally:
            self.state.commit(importer.report)
            self._unconfirmed.update(importer.report.sent_ids)
            self.sent_total += sum(importer.report.sent.values())
        return outcome

    def run(self, stop: threading.Event, *, interval_s: float = DEFAULT_INTERVAL_S,
            on_round: Callable[[Round], None] | None = None, wake: threading.Event | None = None) -> None:
        """Rounds until ``stop`` is set (checked between rounds; the wait between them ends at once).
        After each round the emitter is flushed and, once the broker acknowledged everything, the state
        saved. With ``wake`` (set by a webhook delivery), the wait ends when ``wake`` is set, and a wake
        during a round starts the next one at once; whoever sets ``stop`` must then set ``wake`` too.
        Blocks."""
        failures, unsaved = 0, True
        while not stop.is_set():
            outcome = self.round()
            failures = failures + 1 if outcome.error else 0
            outcome.failures = failures
            unsaved = unsaved or bool(outcome.report and outcome.report.sent_ids)  # a new move sends one
            outcome.delivered = self.emitter.flush(DELIVERY_TIMEOUT_S)
            if outcome.delivered and unsaved:
                self.state.save()
                unsaved = False
            outcome.next_in_s = round_delay(interval_s, failures)
            if on_round is not None:
                on_round(outcome)
            if wake is None:
                stop.wait(outcome.next_in_s)
            else:
                wake.wait(outcome.next_in_s)
                wake.clear()

    # ---------------------------------------------------------------- the guard

    def _wait_stored(self) -> None:
        """Wait until the store holds every event this follower sent (the facts the policy reads);
        GuardUnavailable after ``store_wait_s``."""
        assert self.check is not None
        if self._unconfirmed and not self.emitter.flush(min(DELIVERY_TIMEOUT_S, self.store_wait_s)):
            raise GuardUnavailable("the broker has not acknowledged this round's events yet")
        deadline = time.monotonic() + self.store_wait_s
        while self._unconfirmed:
            wanted = sorted(self._unconfirmed)
            for start in range(0, len(wanted), STORED_BATCH):
                self._unconfirmed -= self.check.stored(wanted[start:start + STORED_BATCH])
            if not self._unconfirmed:
                return
            if time.monotonic() >= deadline:
                raise GuardUnavailable(f"the store does not hold {len(self._unconfirmed)} of the events sent "
                                       f"within {self.store_wait_s:.0f} s; is `provline serve` consuming the "
                                       "lineage topic?")
            time.sleep(STORE_POLL_S)

    def _guard(self, importer: MlflowImport, move: AliasMove, outcome: Round) -> None:
        assert self.check is not None
        # a move held for some rounds is dated by the first that saw it, as an import dates every move
        move = replace(move, moved_at=self._first_seen.setdefault(str(move.fields["event_id"]), move.moved_at))
        environment = self.guards[move.alias]
        version, previous = str(move.fields["model_version"]), move.fields.get("previous_version")
        where = f"{model_key(move.model_name, version)} as {move.alias!r}"
        self._unconfirmed.update(importer.report.sent_ids)  # this round's events: the version's own among them
        try:
            self._wait_stored()
            missing = self.check.missing(move.model_name, version, environment)
        except GuardUnavailable as exc:
            outcome.deferred.append(f"{where}: not checked yet, again next round: {exc}")
            return  # neither emitted nor remembered: the next round finds the same move
        del self._first_seen[str(move.fields["event_id"])]
        if not missing:
            importer.release(move)
            outcome.verdicts.append(Verdict(move.model_name, move.alias, version, previous, environment, []))
            return
        _, decision = mapping.guard_rejection(move.fields, environment=environment, missing=missing)
        importer.release(move, mapping.rejected_deployment(move.fields, decision, environment=environment))
        importer.emit("Decision", decision)
        verdict = Verdict(move.model_name, move.alias, version, previous, environment, missing,
                          decision_id=str(decision["event_id"]))
        if not self.enforce:
            outcome.verdicts.append(verdict)
        elif previous is None:
            outcome.verdicts.append(replace(verdict, not_rolled_back="the alias pointed at no version before"))
        else:
            self._pending_rollbacks[(move.model_name, move.alias)] = move
            outcome.verdicts.append(self._rollback(importer, move, verdict))

    def _rollback(self, importer: MlflowImport, move: AliasMove, verdict: Verdict) -> Verdict:
        """Move a rejected alias back in MLflow and record the ROLLBACK. MlflowError leaves it pending
        (tried again next round); an alias that moved on meanwhile is left where it is."""
        key = (move.model_name, move.alias)
        version, previous = verdict.version, str(verdict.previous_version)
        current = self.reader.alias_version(move.model_name, move.alias)
        if current != version:
            del self._pending_rollbacks[key]
            return replace(verdict, not_rolled_back=f"the alias moved on to {current or 'nothing'} first")
        self.reader.set_alias(move.model_name, move.alias, previous)
        del self._pending_rollbacks[key]
        fields, history = mapping.alias_rollback(
            move.model_name, move.alias, move.history, version_times=move.version_times,
            reason=f"MLflow alias {move.alias!r} moved back by the promotion guard: {version} does not meet the "
                   f"promotion policy for {verdict.environment} (Decision {verdict.decision_id})")
        now = datetime.now(UTC)
        importer.emit("Deployment", fields, event_time=now)
        importer.remember_alias(move.model_name, move.alias, history, now)
        return replace(verdict, rolled_back=True)

    def _retry_rollbacks(self, importer: MlflowImport, outcome: Round) -> None:
        """Rollbacks an earlier round could not make (MLflow failed on them), tried again."""
        for (name, alias), move in list(self._pending_rollbacks.items()):
            environment = self.guards[alias]
            _, decision = mapping.guard_rejection(move.fields, environment=environment, missing=[])
            verdict = Verdict(name, alias, str(move.fields["model_version"]), move.fields.get("previous_version"),
                              environment, ["(rejected in an earlier round)"], decision_id=str(decision["event_id"]))
            outcome.verdicts.append(self._rollback(importer, move, verdict))
