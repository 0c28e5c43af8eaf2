"""kiq writes the bytes Ruby's ``JSON.generate`` would write (issue 3, point 3).

Sidekiq's ``SortedEntry#reschedule`` ZINCRBYs ``JSON.generate(parsed member)``: unless
that re-encoding is byte-identical to what kiq stored, Redis adds a second member and
the job runs twice. Ruby here parses each kiq-encoded payload and generates it again.
"""

from __future__ import annotations

import random
import struct
import subprocess

import pytest

import kiq
from kiq import payload as wire
from tests.interop.conftest import RUBY_TIMEOUT, TRICKY_ARGS

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

REGENERATE = 'require "json"; STDIN.each_line { |line| puts JSON.generate(JSON.parse(line)) }'


def ruby_regenerate(lines: list[bytes]) -> list[bytes]:
    done = subprocess.run(
        ["ruby", "-e", REGENERATE],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=RUBY_TIMEOUT,
        check=True,
    )
    return done.stdout.splitlines()


def random_floats(count: int) -> list[float]:
    """Doubles over the whole range (random bit patterns) and over every decade."""
    rng = random.Random(3)
    floats = [1e15, 1e16, 999999999999999.9, 1e-4, 9.999999999999999e-05, 5e-324, -0.0, 0.0]
    while len(floats) < count:
        if rng.random() < 0.5:
            value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        else:
            value = rng.choice((1, -1)) * rng.random() * 10.0 ** rng.randint(-30, 30)
        if value == value and abs(value) != float("inf"):
            floats.append(value)
    return floats


def test_job_payload_bytes_match_json_generate(ruby_sidekiq, config):
    """A whole kiq payload (bignums, unicode, nesting, timestamps) re-encodes identically."""
    client = kiq.Client(config)
    payload = client.normalize({"class": "RubyEcho", "queue": "ruby", "args": TRICKY_ARGS})
    payload["enqueued_at"] = wire.now()
    raw = wire.dumps(payload)

    assert ruby_regenerate([raw]) == [raw]


def test_float_spelling_matches_json_generate(ruby_sidekiq):
    """Every float kiq encodes is spelled as Ruby spells it (1.0e+20, 1.5e-05, 0.0001...)."""
    lines = [wire.dumps([value]) for value in random_floats(5000)]

    regenerated = ruby_regenerate(lines)

    mismatches = [(a, b) for a, b in zip(lines, regenerated, strict=True) if a != b]
    assert mismatches == []
