"""kiq Jobs claiming the ActiveJob classes of tests/interop/ruby/activejob_app.rb.

Loaded next to jobs.py by the ActiveJob interop tests (``kiq worker -r jobs -r ajjobs``).
Each records what it received, every value described with its Python type by
``describe``, in ``interop:activejob:py`` (KIQ_REDIS_URL), for the test to compare.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis

import kiq
from kiq.activejob import GlobalID, IndifferentDict, RubyModule, RubyRange, Symbol

PY_AJ_DONE = "interop:activejob:py"
_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))


def describe(value: Any) -> Any:
    """A JSON form of a Python value that keeps its type: ``{"type": ..., "value": ...}``."""
    for kind in (Symbol, RubyModule, GlobalID):
        if type(value) is kind:
            return {"type": kind.__name__, "value": str(value)}
    if isinstance(value, IndifferentDict):
        return {"type": "IndifferentDict", "value": {k: describe(v) for k, v in value.items()}}
    if isinstance(value, dict):
        keys = [[type(k).__name__, str(k)] for k in value]
        return {"type": "dict", "keys": keys, "value": {k: describe(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"type": "list", "value": [describe(v) for v in value]}
    if isinstance(value, datetime):
        zone = getattr(value.tzinfo, "key", None)
        return {"type": "datetime", "value": value.isoformat(), "zone": zone}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, timedelta):
        return {"type": "timedelta", "value": value.total_seconds()}
    if isinstance(value, Decimal):
        return {"type": "Decimal", "value": str(value)}
    if isinstance(value, range):
        return {"type": "range", "value": [value.start, value.stop, value.step]}
    if isinstance(value, RubyRange):
        return {"type": "RubyRange", "value": [value.begin, value.end, value.exclude_end]}
    return {"type": type(value).__name__, "value": value}


class AjImport(kiq.Job, activejob="AjImport", queue="activejob"):
    """Claims Rails' AjImport: records positional arguments and ActiveJob's bookkeeping."""

    def perform(self, *args: Any) -> None:
        aj = self.activejob
        entry = {
            "job_class": aj.job_class,
            "job_id": aj.job_id,
            "executions": aj.executions,
            "priority": aj.priority,
            "args": [describe(a) for a in args],
            "kwargs": {},
        }
        _redis.rpush(PY_AJ_DONE, json.dumps(entry, ensure_ascii=False))


class AjKeywords(kiq.Job, activejob="AjKeywords", queue="activejob"):
    """Claims Rails' AjKeywords, whose keyword arguments arrive as Python ones."""

    async def perform(self, first: int, *, mode: str, at: date, tags: list[Any]) -> None:
        entry = {
            "job_class": self.activejob.job_class,
            "job_id": self.activejob.job_id,
            "args": [describe(first)],
            "kwargs": {"mode": describe(mode), "at": describe(at), "tags": describe(tags)},
        }
        _redis.rpush(PY_AJ_DONE, json.dumps(entry, ensure_ascii=False))
