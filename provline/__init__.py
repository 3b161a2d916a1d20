"""provline: trace every ML prediction back to its input, model, code, environment and data.

This package holds the ``provline`` command line; the components are the top-level packages
``schemas``, ``producers``, ``sidecar``, ``stream_processors`` and ``sink``.
"""
