"""pytest fixtures for projects that use kiq (registered through the ``pytest11`` entry point).

* ``kiq_fake``: fake mode for one test; pushes are kept in memory, cleared before
  and after. Yields the ``kiq.testing`` module::

      def test_signup_sends_welcome(kiq_fake):
          signup("ann@example.com")
          assert len(WelcomeEmail.jobs) == 1
          kiq_fake.drain_all()

* ``kiq_inline``: inline mode for one test; every push runs the job at once, in the
  calling thread.
* ``kiq_config``: a Config on a real, flushed Redis database (``KIQ_TEST_REDIS_URL``,
  default ``redis://127.0.0.1:6379/15``), installed as the default for the test and
  closed after. Skips the test when that Redis is unreachable, except under ``CI``.

pytest loads this module in every run of every project that installs kiq, so it
imports nothing from kiq until a fixture is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from types import ModuleType

    from kiq.config import Config

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"  # db 15: kept apart from app data


@pytest.fixture
def kiq_fake() -> Iterator[ModuleType]:
    """Fake mode for this test: ``MyJob.jobs``, ``MyJob.drain()``, ``kiq_fake.drain_all()``."""
    from kiq import testing

    with _isolated(testing), testing.fake():
        yield testing


@pytest.fixture
def kiq_inline() -> Iterator[ModuleType]:
    """Inline mode for this test: ``perform_async`` runs the job before it returns."""
    from kiq import testing

    with _isolated(testing), testing.inline():
        yield testing


@pytest.fixture
def kiq_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """A Config on an empty real Redis database, used by ``perform_async`` during the test."""
    import kiq.config
    from kiq.errors import RedisUnavailable

    url = os.environ.get("KIQ_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    config = kiq.config.Config(redis_url=url)
    try:
        config.store.flushdb()
    except RedisUnavailable as exc:
        config.close()
        if os.environ.get("CI"):
            raise  # CI must have its Redis: never skip silently there
        pytest.skip(f"kiq_config: {exc} (set KIQ_TEST_REDIS_URL)")
    monkeypatch.setattr(kiq.config, "_default", config)
    yield config
    config.close()


@contextmanager
def _isolated(testing: ModuleType) -> Iterator[None]:
    """Empty the fake queues, and restore ``testing.server_middleware``, around a test."""
    saved = list(testing.server_middleware)
    testing.clear_all()
    try:
        yield
    finally:
        testing.clear_all()
        testing.server_middleware.clear()
        for middleware in saved:
            testing.server_middleware.add(middleware)
