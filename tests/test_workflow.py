"""Workflows (issue 17 point 2): chain, group, chord and a DAG on top of batches, in an
in-process worker on a real Redis. The restart proof with real processes is in
tests/test_workflow_restart.py."""

from __future__ import annotations

import json

import pytest
import redis

import kiq
from kiq.config import Config
from kiq.errors import JobArgumentError
from kiq.workflow import advance
from tests.support import batch_jobs
from tests.support.batch_jobs import BRow, Step
from tests.support.inprocess import running
from tests.support.wait import wait_until


@pytest.fixture
def recorded(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    monkeypatch.setattr(batch_jobs, "_redis", r)
    return r


def outputs(r: redis.Redis) -> dict[str, list[object]]:
    return {k: json.loads(v) for k, v in r.hgetall("bt:out").items()}


def finished(config: Config, wid: str) -> bool:
    return kiq.WorkflowStatus(wid, config=config).state == "succeeded"


def test_chain_of_five_passes_each_result_on_and_runs_each_step_once(
    config: Config, recorded: redis.Redis
) -> None:
    flow = kiq.chain(*(Step.s(name, 1) for name in "abcde"), pass_result=True)
    wid = flow.start()
    status = kiq.WorkflowStatus(wid)
    assert [s["state"] for s in status.steps] == ["running"] + ["waiting"] * 4
    with running(config):
        wait_until(lambda: finished(config, wid), timeout=20)
    assert batch_jobs.runs(recorded) == dict.fromkeys("abcde", 1)
    out = outputs(recorded)
    assert out["a"] == [1]
    assert out["b"] == [1, 1]
    assert out["e"] == [1, 4]  # 1 + the 4 accumulated before it
    assert [s["state"] for s in kiq.WorkflowStatus(wid).steps] == ["succeeded"] * 5


def test_chord_callback_gets_the_group_results_in_order(
    config: Config, recorded: redis.Redis
) -> None:
    header = kiq.group(Step.s(f"row{i}", i) for i in range(30))
    wid = kiq.chord(header, Step.s("sum", 0), pass_result=True).start()
    with running(config):
        wait_until(lambda: finished(config, wid), timeout=30)
    assert outputs(recorded)["sum"] == [0, list(range(30))]
    assert batch_jobs.runs(recorded)["sum"] == 1
    status = kiq.WorkflowStatus(wid)
    assert status.step("0")["total"] == 30


def test_dag_step_waits_for_all_its_predecessors(config: Config, recorded: redis.Redis) -> None:
    flow = kiq.dag(
        {"a": Step.s("a", 2), "b": Step.s("b", 3), "c": Step.s("c", 0), "d": Step.s("d", 0)},
        after={"c": ["a", "b"], "d": ["c"]},
        pass_result=True,
    )
    wid = flow.start()
    assert [s["state"] for s in kiq.WorkflowStatus(wid).steps] == [
        "running",
        "running",
        "waiting",
        "waiting",
    ]
    with running(config):
        wait_until(lambda: finished(config, wid), timeout=20)
    out = outputs(recorded)
    assert out["c"] == [0, [2, 3]]
    assert out["d"] == [0, 5]


def test_a_workflow_is_json_in_redis_and_launching_again_runs_nothing_twice(
    config: Config, r: redis.Redis
) -> None:
    wid = kiq.chain(Step.s("a"), kiq.group([Step.s("b1"), Step.s("b2")])).start()
    spec = json.loads(r.hget(f"kiq|wf|{wid}", "spec") or "")
    assert [step["after"] for step in spec["steps"]] == [[], ["0"]]
    assert spec["steps"][1]["jobs"][0] == {"class": "Step", "args": ["b1"], "options": {}}
    assert advance(config, wid) == []  # already launched: nothing written
    assert r.llen("queue:default") == 1
    assert r.zscore("kiq|workflows", wid) is not None


def test_a_dead_step_stops_the_steps_after_it(config: Config, recorded: redis.Redis) -> None:
    wid = kiq.chain(BRow.s(1, "die", retry=0), Step.s("b")).start()
    with running(config):
        wait_until(lambda: kiq.WorkflowStatus(wid).state == "dead", timeout=20)
    status = kiq.WorkflowStatus(wid)
    assert [s["state"] for s in status.steps] == ["dead", "waiting"]
    assert "b" not in batch_jobs.runs(recorded)


def test_bad_shapes_are_refused_before_anything_is_written(config: Config, r: redis.Redis) -> None:
    with pytest.raises(JobArgumentError, match="cycle"):
        kiq.dag({"a": Step.s("a"), "b": Step.s("b")}, after={"a": ["b"], "b": ["a"]})
    with pytest.raises(JobArgumentError, match="unknown steps"):
        kiq.dag({"a": Step.s("a")}, after={"a": ["zz"]})
    with pytest.raises(JobArgumentError, match="no jobs"):
        kiq.group([])
    assert r.dbsize() == 0
