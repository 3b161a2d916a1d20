"""Kafka -> ClickHouse sink: writer loop, DDL and migrations, audit queries and the audit HTTP API.

Nothing here runs at import time; build :class:`provline.sink.settings.ServeSettings` once and pass it down.
"""
