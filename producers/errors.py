"""Errors raised by the producers library.

    ProducerError          base class
    └── ConfigurationError settings that cannot work; raised at start-up, never on the hot path

Hot paths (``emit``) never raise into the host program: they log and count instead.
"""

from __future__ import annotations


class ProducerError(RuntimeError):
    """Base class for provline producer errors."""


class ConfigurationError(ProducerError):
    """The emitter settings cannot work; the message says which setting to change."""
