"""The batch and workflow proof at the issue's sizes (issue 17), with the harness the
CI tests use at smaller ones (tests/support/batch_chaos.py):

  1. a batch of 10,000 jobs over 4 worker processes, random SIGKILLs and one Redis
     SIGKILL + restart from its AOF (appendfsync always): success once, counts exact;
  2. the same with 5% of the jobs failing once (success after the last retry);
  3. the same with one job that dies: death once, complete once, no success;
  4. batches nested 3 levels deep (100 rows a level): each parent after its child;
  5. a chain of 5 and a chord of 1,000 stopped mid-way (every worker gone), then
     finished by new workers: each step run once.

Prints one JSON line per scenario. Bounded: each scenario has a deadline.

Usage::

    PYTHONPATH=src:. python bench/batch_stress.py [--rows 10000] [--only 1,2,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.batch_chaos import run, run_nested, run_workflow_restart


def emit(name: str, report: object) -> None:
    # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs as keys
    data = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}  # type: ignore[arg-type]
    fired = data.pop("at_fire", None) or {}
    if fired:  # what each callback saw when it ran: success after the last retry
        data["seen_by_callbacks"] = {
            event: {"pending": entry["pending"], "failures": entry["failures"]}
            for event, entry in fired.items()
        }
    print(json.dumps({"scenario": name, **data}, default=dict), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--chord", type=int, default=1_000)
    parser.add_argument("--only", default="1,2,3,4,5")
    options = parser.parse_args()
    only = {int(n) for n in options.only.split(",")}
    rows = options.rows
    with tempfile.TemporaryDirectory(prefix="batch-stress-") as tmp:
        folder = Path(tmp)
        if 1 in only:
            emit("success", run(folder / "1", rows=rows, kills=10, kill_every=2.0, deadline=900))
        if 2 in only:
            report = run(
                folder / "2", rows=rows, kills=10, kill_every=2.0, flaky=0.05, deadline=900
            )
            emit("flaky", report)
        if 3 in only:
            report = run(folder / "3", rows=rows, kills=10, kill_every=2.0, die=1, deadline=900)
            emit("death", report)
        if 4 in only:
            emit("nested", run_nested(folder / "4", levels=3, rows=100))
        if 5 in only:
            emit("chain", run_workflow_restart(folder / "5a", kind="chain", size=5))
            emit("chord", run_workflow_restart(folder / "5b", kind="chord", size=options.chord))


if __name__ == "__main__":
    main()
