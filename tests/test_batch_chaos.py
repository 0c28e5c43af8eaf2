"""The batch proof at CI sizes (issue 17): real worker processes SIGKILLed at random,
Redis SIGKILLed and restarted from its AOF, and still each batch event's callback is
pushed exactly once with exact counts. bench/batch_stress.py runs the issue's sizes
with the same harness (tests/support/batch_chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.batch_chaos import run


@pytest.mark.slow
def test_success_fires_once_through_kills_a_redis_restart_and_retries(tmp_path: Path) -> None:
    report = run(tmp_path, rows=240, workers=4, kills=4, flaky=0.05, deadline=90)
    assert report.redis_restarted
    assert report.kills == 4
    assert report.events == {"complete": 1, "success": 1}, report
    status = report.status
    assert (status["total"], status["pending"], status["failures"]) == (240, 0, 0)
    assert report.finished == 240
    assert report.leftovers == 0
    # success ran after the last retry: nothing pending or failing when it fired
    assert report.at_fire["success"]["pending"] == 0
    assert report.at_fire["success"]["failures"] == 0


@pytest.mark.slow
def test_one_dying_job_fires_death_and_complete_once_and_no_success(tmp_path: Path) -> None:
    report = run(tmp_path, rows=150, workers=4, kills=3, restart_redis=False, die=1, deadline=90)
    assert report.events == {"complete": 1, "death": 1}, report
    status = report.status
    assert (status["total"], status["pending"], status["failures"], status["dead"]) == (
        150,
        1,
        1,
        1,
    )
    assert not status["success"]
    assert report.finished == 149
