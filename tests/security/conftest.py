"""Fixtures the security tests share with the integration tests."""

from tests.integration.test_processors_stream import worker_factory  # noqa: F401 (a fixture, registered here)
