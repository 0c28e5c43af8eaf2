"""Redis Cluster: batches and workflows (``kiq.Batch``, ``kiq.chain``...), in two steps.

Why its own file: on one Redis a job joins its batch in one script that counts it and
pushes it (``batch_push.lua``), and a job's outcome fires the callbacks it makes due
and pushes them in one script (``batch_update.lua``). On a cluster a batch's jobs and
callbacks go to queue shards on other slots than the batch, so each of those writes is
two steps here, and this is why that keeps the guarantees (callbacks exactly once,
exact counts, no job lost):

  * **Where the keys are.** Every key of a batch family (a batch, its parts, its
    children: ``<root>.<digest>``, and one outbox) has the root's hash tag
    (``SLOT_RULES`` "batch"), so every decision about a batch is still one script on
    one slot, as on one Redis: counting members, recording outcomes (idempotent per
    jid), firing each event once (``<event>_at``), walking up to the parents.
  * **Step 1, on the batch's slot** (``cluster_batch_add.lua``, ``batch_update.lua``
    with its cluster flag): the jobs are counted as pending members and written to the
    family's outbox (``b-{<root>}-outbox``: claim -> queue, at, payload); a fired
    callback is written to the outbox instead of being pushed. Membership first: a job
    can never run, and its outcome be dropped as "not a member", before it is counted;
    a callback is decided exactly once, here.
  * **Step 2, on each queue shard's slot** (``cluster_batch_deliver.lua``): the outbox's
    entries are pushed, each with a claim (``kiq|batch-claims|{<s>}``) taken in the same
    step as its push, then deleted from the outbox. A delivery repeated (the deleter
    crashed, two processes deliver at once) finds the claim and pushes nothing again:
    each job and each callback is pushed once.
  * **A crash between the steps** leaves counted jobs or a decided callback in the
    outbox, never a pushed job that is not counted, and nothing is forgotten: the
    outbox is delivered by the writer itself right after step 1 (and again if it
    retries), then by whoever touches the family next: any job outcome of the family
    (``batch_update`` returns the outbox's size), a worker's batch check (each second
    per batch, and a recovered job's: the job whose outcome fired a callback is not yet
    acknowledged, so its process dying makes it re-run, and that re-run's check
    delivers), any read of the batch (``BatchStatus``, the Web UI, a workflow's
    ``advance``, which reads its steps before launching them), and, when nothing
    touches it again (a batch's very first push, or a workflow's first step, whose
    writer died), the workers' outbox sweep (below). A jobs() block whose process died
    leaves the block open, so its batch fires nothing, as on one Redis; its jobs run.
  * **The outbox sweep** (``batch_sweep``, one step of every worker's scheduled/retry
    poller tick, kiq.scheduler). Before step 1, its writer stamps the family in the
    global index ``kiq|batch-outboxes`` (``_stamp``: ZADD GT root now; free when the
    batch is created, beside its ``batches`` entry, and reused by a process for
    STAMP_REUSE seconds). A tick takes the families stamped more than
    ``batch_sweep_grace`` ago (oldest first, SWEEP_MAX at most) and, per family, one
    script on its slot (``cluster_batch_sweep.lua``): an outbox with entries is
    delivered (step 2; its claims make a sweep racing a live writer or another sweep
    harmless); an empty one is sealed with the score read, then unindexed only at that
    score (``cluster_batch_unindex.lua``). Safe in every order: stamp before outbox (a
    crash between leaves an empty outbox indexed, which is dropped, never an outbox
    unindexed); a step 1 whose stamp is at or below the seal writes nothing and stamps
    again above it, so no entry lands after the sweep saw the outbox empty; a stamp
    since the sweep's read raised the score, so that entry stays. A seal is kept
    BATCH_SEAL_TTL (a day), the claims' bound: a writer stalled longer than that between
    its stamp and its step 1 could strand its push. A job outcome's callbacks are not
    stamped (a round trip per outcome): its re-run delivers them, as above.
  * **Failover.** With ``wait_replicas`` each step waits for its replicas (``WAIT``):
    an acknowledged registration, outcome or delivery survives its primary's loss. The
    steps are repeatable, so a step cut by a failover is simply run again.

What it costs: a push into a batch is three round trips (count, deliver, delete) per
call instead of one (the delivery reads nothing back when the outbox held only this
call's jobs), four when its process has not stamped the family in the last STAMP_REUSE
seconds; a job's outcome stays one round trip unless it fired a callback. A sweep tick
is one ZRANGEBYSCORE when nothing is due, then one script per due family (one exchange
per node) and one for the unindex (docs/cluster.md has the figures). Claims are
kept ``BATCH_CLAIM_TTL`` (a day): an outbox entry delivered and not deleted, then left
untouched for longer than that, would be pushed a second time (its job then runs twice;
the counts stay exact, its outcome being idempotent per jid).

The batch index (``batches``) and the workflow index (``kiq|workflows``) are on the
global slot: written first (ZADD NX, idempotent), so every batch is listed; an entry of
a batch that was never created reads as expired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from redis.exceptions import ResponseError

from kiq.errors import BatchError
from kiq.keys import BATCH_CLAIM_TTL, BATCH_SEAL_TTL, batch_root, outbox_job_field
from kiq.store.batches import Batches, BatchJob, _text
from kiq.store.cluster_sets import ClusterSets
from kiq.store.connection import is_transient, is_wrong_type

log = logging.getLogger(__name__)

STAMP_REUSE: Final = 5.0  # seconds a process reuses its stamp of a family (_stamp)
STAMPS_KEPT: Final = 10_000  # families whose stamp a process remembers at most
STAMP_TRIES: Final = 3  # step 1 refused by a seal: stamp above it and run it again
SWEEP_CHUNK: Final = 200  # index entries read per ZRANGEBYSCORE of a sweep
SWEEP_MAX: Final = 2_000  # families one sweep call visits at most (the rest: next tick)


class ClusterBatches(ClusterSets, Batches):
    """``Batches`` on a cluster (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stamps: dict[str, float] = {}  # root -> this process's last index stamp
        self._stamps_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _batch_eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """``name`` on the batch's slot, then WAIT (``wait_replicas``)."""
        return self._eval_waiting(name, keys, args)

    def _batch_add(
        self,
        mode: str,
        bid: str,
        ttl: int,
        now: float,
        fields: Mapping[str, str],
        jobs: Sequence[BatchJob],
        stamp: float | None = None,
    ) -> int:
        b = self.keys.batch
        keys = [b(bid), b(bid, "jids"), self.keys.batch_outbox(bid)]
        keys.append(self.keys.batch_outbox_seal(bid))
        args: list[Any] = [mode, ttl, repr(now), "", len(fields)]
        for name, value in fields.items():
            args += (name, value)
        ours: dict[bytes, bytes] = {}
        for jid, queue, at, raw in jobs:
            self._check_member(queue)
            when = "" if at is None else repr(float(at))
            args += (jid, queue, when, raw)
            ours[outbox_job_field(jid).encode()] = b"|".join((when.encode(), queue.encode(), raw))
        stamp = self._stamp(bid) if stamp is None else stamp
        for _ in range(STAMP_TRIES):
            args[3] = repr(stamp)
            added, waiting = self._run_batch_script("cluster_batch_add", keys, args)
            if int(added) != -2:
                break
            # A sweep found the outbox empty and is unindexing the family at a score not
            # below this stamp (cluster_batch_add.lua): nothing was written. Stamp above.
            stamp = self._stamp(bid, above=float(waiting))
        else:
            raise BatchError(
                f"batch {bid}: the outbox sweep sealed its family {STAMP_TRIES} times in a "
                f"row; check this host's clock against the other kiq processes' and retry"
            )
        try:
            if int(added) >= 0 and int(waiting) == len(ours):
                self._deliver(bid, ours)  # only this call's entries: none to read back
            elif int(waiting):
                self.batch_deliver(bid)
        except Exception as exc:
            # Once more (a node lost mid-delivery: _per_node has refreshed the topology,
            # so this reaches the promoted replica); failing again, the error is raised
            # and the jobs, counted, stay in the outbox for the next touch to push.
            if not is_transient(exc):
                raise
            self.batch_deliver(bid)
        return int(added)

    def _stamp(
        self, bid: str, also: Sequence[tuple[str, tuple[Any, ...]]] = (), above: float = 0.0
    ) -> float:
        """Index ``bid``'s family for the sweep (``ZADD GT`` on the global slot, with the
        global-slot commands ``also``, one exchange) before a step 1 writes its outbox;
        the stamp, which that step 1 carries (a seal at or above it refuses the step).

        Index first, outbox second: a crash between them leaves an entry whose outbox is
        empty, which the sweep seals and removes; the other order could leave an outbox
        no sweep knows. A stamp of this process younger than STAMP_REUSE is reused (a
        jobs() block's pushes cost no extra round trip): it is still the entry's score
        or below it, and if a sweep has removed the entry since, its seal (at or above
        this stamp) makes the step 1 refuse, and the caller stamps again, ``above`` it.
        """
        root = batch_root(bid)
        now = time.time()
        with self._stamps_lock:
            known = self._stamps.get(root)
        if not also and known is not None and now - known < STAMP_REUSE and known > above:
            return known
        stamp = max(now, above + 0.001)  # strictly above a seal (clocks may disagree)
        index = self.keys.batch_outboxes
        with self.translate_errors():
            zadd = (index, ("ZADD", index, "GT", repr(stamp), root))
            self._per_node([*also, zadd], wait=self.wait_replicas)
        with self._stamps_lock:
            if len(self._stamps) >= STAMPS_KEPT:
                self._stamps = {r: t for r, t in self._stamps.items() if now - t < STAMP_REUSE}
            self._stamps[root] = stamp
        return stamp

    @staticmethod
    def _check_member(queue: str) -> None:
        if "|" in queue:  # the outbox entry's separator (queue names cannot hold it here)
            raise ValueError(f"queue {queue!r} holds '|', which cluster mode cannot carry")

    def batch_deliver(self, bid: str) -> int:
        """Push what ``bid``'s family outbox holds (step 2 of the module docstring), each
        entry once; how many were pushed now (entries pushed before are only deleted)."""
        with self.translate_errors():
            entries: dict[bytes, bytes] = self._r.hgetall(self.keys.batch_outbox(bid))
        return self._deliver(bid, entries) if entries else 0

    def _deliver(self, bid: str, entries: Mapping[bytes, bytes]) -> int:
        """Push ``entries`` (outbox claim -> entry) with their claims, per queue shard,
        then delete them from the outbox."""
        root = batch_root(bid)
        with self.translate_errors():
            by_shard: dict[str, list[Any]] = {}
            queues: list[str] = []
            for claim, value in entries.items():
                at, queue, raw = value.split(b"|", 2)
                name = queue.decode()
                queues.append(name)
                item = by_shard.setdefault(self.shard_for(name, raw), [])
                item += (f"{root}|{_text(claim)}", at, raw)
            if registering := self._register(queues):  # names first (ClusterBase._register)
                self._per_node(registering)
            pushed = 0
            for shard, items in by_shard.items():
                keys = [
                    self.keys.batch_claims(shard),
                    self.keys.queue(shard),
                    self.keys.schedule_shard(shard),
                ]
                args = [repr(time.time()), BATCH_CLAIM_TTL, *items]
                pushed += int(self._eval_waiting("cluster_batch_deliver", keys, args))
            # No WAIT: a delete lost in a failover only makes the next touch deliver the
            # entries again, which their claims turn into nothing.
            outbox = self.keys.batch_outbox(bid)
            self._per_node([(outbox, ("HDEL", outbox, *entries))])
        return pushed

    # -- the Batches calls, on a cluster -------------------------------------------------
    def batch_open(
        self, bid: str, token: str, ttl: int, now: float, parent: str, fields: Mapping[str, str]
    ) -> bool:
        """As ``Batches.batch_open``; the index entry written first (another slot)."""
        if parent and batch_root(parent) != batch_root(bid):
            raise BatchError(
                f"batch {bid} cannot be a child of {parent} on a cluster: a child batch's "
                f"bid must start with its root's ('{batch_root(parent)}.'); let kiq name "
                f"it (kiq.Batch() inside the parent's jobs() block)"
            )
        if fields:  # a new batch: its index entry and its family's stamp, one exchange
            index = self.keys.batches
            self._stamp(bid, also=[(index, ("ZADD", index, "NX", repr(now), bid))])
        # The index key is the batch's own hash: no index write on the batch's slot.
        return self._open_batch(bid, token, ttl, now, parent, fields, self.keys.batch(bid))

    def batch_push(self, bid: str, ttl: int, jobs: Sequence[BatchJob]) -> int:
        """Count ``jobs`` in ``bid`` and put them in its outbox (one script on its slot),
        then deliver the outbox; how many were newly counted."""
        return self._batch_add("push", bid, ttl, 0.0, {}, jobs)

    def batch_launch(
        self, bid: str, ttl: int, now: float, fields: Mapping[str, str], jobs: Sequence[BatchJob]
    ) -> bool:
        """Create ``bid`` with ``jobs`` unless it exists, then deliver its outbox (also
        when it existed: what a launch cut by a crash left); True if launched now."""
        index = self.keys.batches
        stamp = self._stamp(bid, also=[(index, ("ZADD", index, "NX", repr(now), bid))])
        return self._batch_add("launch", bid, ttl, now, fields, jobs, stamp) >= 0

    def batch_update(self, bid: str, op: str, member: str, info: str | bytes = "") -> list[str]:
        """``batch_update.lua`` with its cluster flag (callbacks to the outbox), then the
        outbox delivered when it holds anything (this call's callbacks, or leftovers)."""
        args = [self.keys.prefix, op, bid, member, info, "1"]
        reply = list(self._run_batch_script("batch_update", [self.keys.batch(bid)], args))
        if reply and isinstance(reply[-1], int) and reply.pop():  # the outbox's size
            self.batch_deliver(bid)
        return [_text(event) for event in reply]

    def batch_gate(self, bid: str, jid: str) -> tuple[bool, bool, bool]:
        """As ``Batches.batch_gate``, and the outbox delivered when it holds anything: a
        recovered job's check is where a callback its first run decided gets pushed."""
        commands: list[tuple[Any, ...]] = [
            ("HMGET", self.keys.batch(bid), "created_at", "invalidated"),
            ("SISMEMBER", self.keys.batch(bid, "jids"), jid),
            ("HLEN", self.keys.batch_outbox(bid)),
        ]
        with self.translate_errors():
            (created, invalidated), pending, waiting = self._call(commands)
        if waiting:
            self.batch_deliver(bid)
        return created is not None, invalidated is not None, bool(pending)

    def batch_read_many(
        self, bids: Sequence[str]
    ) -> list[tuple[dict[str, str], dict[str, int]] | None]:
        """As ``Batches.batch_read_many``, after delivering the outbox of any of these
        families that holds entries (a read is one of the repairs: module docstring)."""
        with self.translate_errors():
            pipe = self._pipeline()
            for bid in bids:
                pipe.hlen(self.keys.batch_outbox(bid))
            waiting = pipe.execute() if bids else []
        for bid in {batch_root(bid) for bid, n in zip(bids, waiting, strict=True) if n}:
            self.batch_deliver(bid)
        return super().batch_read_many(bids)

    # -- the outbox sweep (kiq.scheduler's poller, each tick) ----------------------------
    def batch_sweep(self, now: float, grace: float) -> int:
        """Deliver the outboxes of the families stamped in ``batch_outboxes`` more than
        ``grace`` seconds before ``now`` (a step 2 that never ran: its writer died and
        nobody touched the batch since), and unindex those found empty; how many jobs
        and callbacks were pushed. At most SWEEP_MAX families a call, oldest first.

        Safe beside live writers and other sweeps: a delivery pushes each entry once
        (its claim), an empty outbox is sealed before its entry is removed (a writer
        stamped at or below the seal must stamp again: cluster_batch_add.lua), and the
        entry is removed only at the score that was sealed (a newer stamp keeps it).
        """
        index = self.keys.batch_outboxes
        low, seen, pushed = "-inf", 0, 0
        while seen < SWEEP_MAX:
            try:
                with self.translate_errors():
                    due = self._r.zrangebyscore(
                        index, low, f"({now - grace!r}", start=0, num=SWEEP_CHUNK, withscores=True
                    )
            except ResponseError as exc:
                if not is_wrong_type(exc):
                    raise
                # Hostile or a key clash: raising would restart the poller every tick
                # (and its scheduled jobs' part with it); say what to fix and go on.
                log.error(
                    "batch outbox index %s holds another type (%s): batch pushes stranded "
                    "by a dead writer are not swept until the key is deleted",
                    index,
                    exc,
                )
                break
            if not due:
                break
            seen += len(due)
            pushed += self._sweep([(_text(root), float(score)) for root, score in due])
            if len(due) < SWEEP_CHUNK:
                break
            low = f"({due[-1][1]!r}"  # on past these (a tie with the last: next tick)
        return pushed

    def _sweep(self, due: list[tuple[str, float]]) -> int:
        """One chunk of ``batch_sweep``: seal or read each family's outbox (one script per
        family, one exchange per node), deliver what they hold, unindex the sealed."""
        script = self._script("cluster_batch_sweep")
        items = []
        for root, score in due:
            outbox, seal = self.keys.batch_outbox(root), self.keys.batch_outbox_seal(root)
            args = (repr(score), BATCH_SEAL_TTL)
            items.append((outbox, ("EVALSHA", script.sha, 2, outbox, seal, *args)))
        try:
            with self.translate_errors():
                replies = self._per_node(items, wait=self.wait_replicas)
        except ResponseError:  # NOSCRIPT on a node, or one family's key of another type
            replies = [self._sweep_one(item[1][3:]) for item in items]
        sealed: list[Any] = []
        stranded: list[str] = []
        pushed = 0
        for (root, score), reply in zip(due, replies, strict=True):
            if reply is None:
                continue  # its error is logged: the family stays indexed
            if not reply:
                sealed += (root, repr(score))
                continue
            entries = dict(zip(reply[::2], reply[1::2], strict=True))
            try:
                now_pushed = self._deliver(root, entries)
            except ResponseError as exc:  # a queue key of another type: skip it, loudly
                if is_transient(exc):
                    raise
                log.error("batch %s: cannot deliver its outbox now (%s); next tick", root, exc)
                continue
            pushed += now_pushed
            if now_pushed:
                stranded.append(root)
        if stranded:
            log.warning(
                "delivered %d job(s)/callback(s) left in the outbox of %d batch(es) by writers "
                "that died between their two steps: %s",
                pushed,
                len(stranded),
                ", ".join(stranded[:5]) + (" ..." if len(stranded) > 5 else ""),
            )
        if sealed:
            self._eval_waiting("cluster_batch_unindex", [self.keys.batch_outboxes], sealed)
        return pushed

    def _sweep_one(self, call: tuple[Any, ...]) -> Any:
        """``cluster_batch_sweep`` for one family (outbox, seal, score, TTL), alone: the
        script loaded where missing; None (logged) for a family that cannot be swept."""
        outbox, seal, *args = call
        try:
            return self._eval_waiting("cluster_batch_sweep", [outbox, seal], args)
        except ResponseError as exc:
            if is_transient(exc):
                raise
            log.error("cannot sweep the batch outbox %s: %s; fix or delete the key", outbox, exc)
            return None

    def workflow_save(self, wid: str, fields: Mapping[str, str], ttl: int, now: float) -> None:
        """The workflow's hash (its own slot, one MULTI), then its index entry (global
        slot): an entry always names a workflow that exists."""
        with self.translate_errors():
            pipe = self._pipeline(transaction=True)
            pipe.hset(self.keys.workflow(wid), mapping=dict(fields))
            pipe.expire(self.keys.workflow(wid), ttl)
            pipe.execute()
            self._r.zadd(self.keys.workflows, {wid: now})
