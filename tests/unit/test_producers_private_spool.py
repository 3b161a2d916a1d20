"""An emitter without ``spool_dir`` spools into a private temporary directory no other process opens:
it is removed at close once everything was delivered, and kept (and named) when something was not.
Before, every such process left a ``provline-spool-*`` directory behind in the temporary directory."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

from provline.producers.processor import BatchProcessor
from provline.producers.settings import EmitterSettings
from provline.producers.spool import SpooledMessage
from provline.producers.transports import Delivered, MemoryTransport


class NeverDelivers(MemoryTransport):
    """Takes every message and never acknowledges one, as a broker that is down."""

    def send(self, message: SpooledMessage, delivered: Delivered) -> bool:
        return True


def spools(directory: Path) -> list[Path]:
    return sorted(directory.glob("provline-spool-*"))


@pytest.fixture
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes the private spool
    return tmp_path


def test_a_private_spool_is_removed_once_everything_was_delivered(private_temp: Path) -> None:
    transport = MemoryTransport()
    processor = BatchProcessor(lambda: transport, EmitterSettings(linger_s=0.001))
    assert len(spools(private_temp)) == 1, "the emitter did not spool into a private temporary directory"
    for number in range(5):
        assert processor.submit("t", str(number).encode(), b"v")
    assert processor.close(5.0)
    assert len(transport.messages) == 5
    assert spools(private_temp) == []


def test_a_private_spool_holding_undelivered_events_is_kept_and_named(
    private_temp: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    processor = BatchProcessor(NeverDelivers, EmitterSettings(linger_s=0.001))
    assert processor.submit("t", b"k", b"v")
    with caplog.at_level(logging.WARNING, logger="provline"):
        assert not processor.close(0.2)
    [kept] = spools(private_temp)
    assert any(kept.glob("segment-*.log")), "the undelivered event is not in the kept spool"
    assert str(kept) in caplog.text and "PROVLINE_EMITTER__SPOOL_DIR" in caplog.text


def test_a_configured_spool_directory_is_kept_after_a_clean_close(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    processor = BatchProcessor(MemoryTransport, EmitterSettings(spool_dir=directory, linger_s=0.001))
    assert processor.submit("t", b"k", b"v")
    assert processor.close(5.0)
    assert (directory / "committed").exists()
