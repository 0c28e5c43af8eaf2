"""A plain redis-py client on a Config's Redis, for tests that set up or inspect keys.

Why: ``Store`` keeps its clients private (it is kiq's one seam to Redis), so a test
that writes a key by hand, or reads one the way Ruby Sidekiq would, uses its own
client. Replies are bytes, as the store's are.
"""

from __future__ import annotations

import functools

import redis

from kiq.config import Config


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def raw_redis(config: Config) -> redis.Redis:
    """A bytes-reply client on ``config``'s Redis URL (one per URL, kept for the session)."""
    return _client(config.store.url)
