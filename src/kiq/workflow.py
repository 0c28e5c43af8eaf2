"""Workflows on top of batches: chain, group, chord and a small DAG (``after=``).

Example::

    kiq.chain(FetchJob.s(7), ParseJob.s(), MailJob.s(), pass_result=True).start()
    kiq.chord(kiq.group(RowJob.s(i) for i in ids), SummaryJob.s()).start()
    kiq.dag({"a": A.s(), "b": B.s(), "c": C.s()}, after={"c": ["a", "b"]}).start()

A workflow is data: its steps (job class names, arguments, options, what each waits
for) are one JSON value in ``kiq|wf|<wid>``, never a closure, so any process can carry
it on and it survives every process being restarted. Each step runs as one batch,
``b-<wid>-<step>``, launched with all its jobs in one Lua step that writes nothing if
the batch exists (``batch_launch.lua``): launching twice runs the step once. A step's
batch has an ``on_success`` callback, ``kiq.WorkflowAdvance``, pushed exactly once by
the batch's outcome script; it launches every step whose predecessors have all
succeeded. A step that dies (a job in the dead set) stops the steps after it; the
workflow's state is read from its steps' batches (``WorkflowStatus``).

``pass_result=True``: a step gets its predecessors' results as one more argument (the
result of a one-job step; the list of results of a group, in order; a list of those
when a step waits for several). Results are kept in the step batch's ``-results``
hash (JSON, at most ``kiq.batch.MAX_RESULT`` bytes each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kiq import payload as wire
from kiq.batch import Signature, backend, batch_fields
from kiq.batch_status import BatchStatus
from kiq.client import Client
from kiq.config import Config, get_default
from kiq.errors import JobArgumentError, KiqError
from kiq.job import Job

log = logging.getLogger(__name__)

_STEP_ID: Final = re.compile(r"^[A-Za-z0-9_]{1,64}$")


@dataclass
class StepSpec:
    """One step: its jobs (one, or a group), what it waits for, and pass_result."""

    id: str
    jobs: list[Signature]
    after: list[str] = field(default_factory=list)
    pass_result: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "jobs": [sig.to_json() for sig in self.jobs],
            "after": list(self.after),
            "pass_result": self.pass_result,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepSpec:
        jobs = [Signature.from_json(job) for job in data["jobs"]]
        return cls(
            str(data["id"]), jobs, list(data.get("after") or []), bool(data.get("pass_result"))
        )


class Workflow:
    """Steps and their order, not yet started; ``start()`` writes it and launches it."""

    def __init__(self, steps: Sequence[StepSpec], description: str = "") -> None:
        ids = [step.id for step in steps]
        for step in steps:
            if not _STEP_ID.match(step.id):
                raise JobArgumentError(f"step name {step.id!r}: use letters, digits and _")
            if not step.jobs:
                raise JobArgumentError(f"step {step.id!r} has no jobs")
            unknown = [name for name in step.after if name not in ids]
            if unknown:
                raise JobArgumentError(f"step {step.id!r} waits for unknown steps {unknown}")
        if len(set(ids)) != len(ids):
            raise JobArgumentError(f"step names must be unique, got {ids}")
        _check_acyclic(steps)
        self.steps = list(steps)
        self.description = description
        self.wid: str | None = None

    def start(self, *, config: Config | None = None) -> str:
        """Write the workflow to Redis and launch its first steps; return its id (wid)."""
        config = config or get_default()
        wid = self.wid = os.urandom(10).hex()
        spec = json.dumps({"steps": [step.to_json() for step in self.steps]})
        fields = {"spec": spec, "description": self.description, "created_at": repr(wire.now())}
        backend().save_workflow(config, wid, fields)
        advance(config, wid)
        return wid


def _check_acyclic(steps: Sequence[StepSpec]) -> None:
    after = {step.id: set(step.after) for step in steps}
    done: set[str] = set()
    while len(done) < len(after):
        ready = [name for name, deps in after.items() if name not in done and deps <= done]
        if not ready:
            raise JobArgumentError(
                f"the steps wait for each other in a cycle: {sorted(set(after) - done)}"
            )
        done.update(ready)


def _as_jobs(item: Signature | Workflow) -> list[Signature]:
    if isinstance(item, Signature):
        return [item]
    if isinstance(item, Workflow) and len(item.steps) == 1:
        return list(item.steps[0].jobs)
    raise JobArgumentError(f"a step is MyJob.s(...) or kiq.group(...), got {item!r}")


def chain(
    *items: Signature | Workflow, pass_result: bool = False, description: str = ""
) -> Workflow:
    """Run the items one after the other; ``pass_result``: each gets the one before's result."""
    steps = [
        StepSpec(str(i), _as_jobs(item), [str(i - 1)] if i else [], pass_result and i > 0)
        for i, item in enumerate(items)
    ]
    return Workflow(steps, description)


def group(items: Iterable[Signature], *, description: str = "") -> Workflow:
    """Run the jobs side by side, as one step (one batch)."""
    return Workflow([StepSpec("0", list(items))], description)


def chord(
    header: Workflow | Iterable[Signature],
    callback: Signature,
    *,
    pass_result: bool = False,
    description: str = "",
) -> Workflow:
    """A group, then ``callback`` once every job of the group succeeded."""
    jobs = list(header.steps[0].jobs) if isinstance(header, Workflow) else list(header)
    steps = [StepSpec("0", jobs), StepSpec("1", [callback], ["0"], pass_result)]
    return Workflow(steps, description)


def dag(
    steps: Mapping[str, Signature | Workflow],
    *,
    after: Mapping[str, Sequence[str]] | None = None,
    pass_result: bool = False,
    description: str = "",
) -> Workflow:
    """Named steps; ``after={"c": ["a", "b"]}``: c starts once a and b succeeded."""
    order = after or {}
    specs = [
        StepSpec(
            name, _as_jobs(item), list(order.get(name, ())), pass_result and bool(order.get(name))
        )
        for name, item in steps.items()
    ]
    return Workflow(specs, description)


# -- carrying a workflow on (any process) -----------------------------------------------


def step_bid(wid: str, step: str) -> str:
    return f"{wid}-{step}"


def _jid(wid: str, step: str, index: int) -> str:
    """Deterministic jids: a step's result is found by its jobs' positions."""
    return hashlib.sha256(f"{wid}|{step}|{index}".encode()).hexdigest()[:24]


def load(config: Config, wid: str) -> tuple[list[StepSpec], dict[str, str]]:
    fields = backend().load_workflow(config, wid)
    if fields is None:
        raise KiqError(f"workflow {wid} does not exist (expired after batch_ttl, or never started)")
    steps = [StepSpec.from_json(step) for step in json.loads(fields["spec"])["steps"]]
    return steps, fields


def advance(config: Config, wid: str) -> list[str]:
    """Launch every step whose predecessors all succeeded; the steps launched now.

    Safe to call any number of times from any process (each launch writes only if its
    batch does not exist yet): the callback job calls it, and so may an operator to
    resume a workflow whose starting process died before its first launch.
    """
    steps, _ = load(config, wid)
    statuses = {step.id: BatchStatus(step_bid(wid, step.id), config=config) for step in steps}
    needs_results = {name for step in steps if step.pass_result for name in step.after}
    launched = []
    for step in steps:
        if statuses[step.id].exists:
            continue
        if not all(statuses[name].success for name in step.after):
            continue
        extra: list[Any] = []
        if step.pass_result:
            values = [
                _step_value(config, wid, by_id(steps, name), statuses[name]) for name in step.after
            ]
            extra = [values[0] if len(values) == 1 else values]
        if _launch(config, wid, step, extra, keep=step.id in needs_results):
            launched.append(step.id)
    return launched


def by_id(steps: Sequence[StepSpec], name: str) -> StepSpec:
    return next(step for step in steps if step.id == name)


def _step_value(config: Config, wid: str, step: StepSpec, status: BatchStatus) -> Any:
    results = status.results()
    values = [results.get(_jid(wid, step.id, i)) for i in range(len(step.jobs))]
    return values[0] if len(values) == 1 else values


def _launch(config: Config, wid: str, step: StepSpec, extra: list[Any], *, keep: bool) -> bool:
    bid = step_bid(wid, step.id)
    client = Client(config)
    jobs = []
    for index, sig in enumerate(step.jobs):
        payload = client.normalize(sig.item(extra))
        payload["jid"] = _jid(wid, step.id, index)
        payload["bid"] = bid
        jobs.append(payload)
    callbacks = {"success": (WorkflowAdvance, {"wid": wid, "step": step.id})}
    extra_fields = {"wf": wid, "wf_step": step.id}
    if keep:
        extra_fields["keep_results"] = "1"
    fields = batch_fields(
        config, bid, f"workflow {wid} step {step.id}", callbacks, None, extra_fields
    )
    launched = backend().launch(config, bid, fields, jobs)
    if launched:
        log.info("workflow %s: step %s launched (%d jobs)", wid, step.id, len(jobs))
    return launched


class WorkflowAdvance(Job, name="kiq.WorkflowAdvance"):
    """The callback of every step's batch: launch what the step's success made due."""

    def perform(self, bid: str, options: dict[str, Any]) -> None:
        advance(getattr(self, "config", None) or get_default(), str(options["wid"]))


# -- reading a workflow -------------------------------------------------------------------


class WorkflowStatus:
    """One workflow as one object: each step's state and counts, read at once."""

    def __init__(self, wid: str, *, config: Config | None = None) -> None:
        self.wid = wid
        self.config = config or get_default()
        steps, fields = load(self.config, wid)
        self.description = fields.get("description", "")
        try:
            self.created_at: float | None = float(fields.get("created_at", ""))
        except ValueError:
            self.created_at = None
        self.steps: list[dict[str, Any]] = []
        for step in steps:
            status = BatchStatus(step_bid(wid, step.id), config=self.config)
            self.steps.append(
                {
                    "id": step.id,
                    "jobs": [sig.job for sig in step.jobs],
                    "after": step.after,
                    "state": _state(status),
                    "bid": status.bid,
                    "total": status.total,
                    "pending": status.pending,
                    "failures": status.failures,
                    "dead": status.dead,
                }
            )

    @property
    def state(self) -> str:
        """succeeded, dead (a step died: the steps after it never start), or running."""
        states = {step["state"] for step in self.steps}
        if states == {"succeeded"}:
            return "succeeded"
        if "dead" in states:
            return "dead"
        return "running"

    def step(self, name: str) -> dict[str, Any]:
        return next(step for step in self.steps if step["id"] == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wid": self.wid,
            "description": self.description,
            "created_at": self.created_at,
            "state": self.state,
            "steps": self.steps,
        }


def _state(status: BatchStatus) -> str:
    if not status.exists:
        return "waiting"
    if status.success:
        return "succeeded"
    if status.death:
        return "dead"
    if status.failures:
        return "retrying"
    return "running"
