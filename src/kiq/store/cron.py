"""Recurring jobs in sidekiq-cron 1.x's keys: definitions, status, and the tick's claim.

Why one file: the Ruby gem's Web tab and its poller read and write the same keys
(shared/sidekiq-wire.md §11), so their layout is kept in one place, and firing a tick
(claim + push + history) is one Lua step (``lua/cron_fire.lua``): a crash or a Redis
error between a claim and its push can neither lose nor double a tick.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiq.store.connection import Connection


class Cron(Connection):
    """The recurring-jobs half of ``Store`` (see the module docstring)."""

    def cron_save(
        self, name: str, fields: Mapping[str, str | bytes], seed: tuple[str, float]
    ) -> None:
        """SADD cron_jobs + HSET the definition; seed the claim set with ``seed`` (member,
        score) if it has none, so a new job does not fire for the tick current at its
        creation. Two round trips, safe: the seed is a ZADD NX of a past tick, written
        only when the claim set is missing, and a second save writes the same."""
        key = self.keys.cron_job(name)
        pipe = self._pipeline(transaction=True)
        pipe.sadd(self.keys.cron_jobs, key)
        pipe.hset(key, mapping=dict(fields))
        pipe.exists(self.keys.cron_enqueued(name))
        if not pipe.execute()[-1]:
            member, score = seed
            self._r.zadd(self.keys.cron_enqueued(name), {member: score}, nx=True)

    def cron_status(self, name: str) -> str | None:
        """The stored ``status`` (``enabled``/``disabled``), None for a job not stored yet."""
        status = self._r.hget(self.keys.cron_job(name), "status")
        return None if status is None else status.decode()

    def cron_set_status(self, name: str, status: str) -> None:
        self._r.hset(self.keys.cron_job(name), "status", status)

    def cron_delete(self, name: str) -> None:
        """SREM the job from cron_jobs and delete its hash, claims and history (one MULTI)."""
        key = self.keys.cron_job(name)
        pipe = self._pipeline(transaction=True)
        pipe.srem(self.keys.cron_jobs, key)
        pipe.delete(key, self.keys.cron_enqueued(name), self.keys.cron_history(name))
        pipe.execute()

    def cron_count(self) -> int:
        return int(self._r.scard(self.keys.cron_jobs))

    def cron_all(self) -> dict[str, dict[str, str]]:
        """Every stored job: its name (from the ``cron_jobs`` member) -> its hash, decoded.

        Members whose hash is gone are left out.
        """
        members = [m.decode() for m in self._r.smembers(self.keys.cron_jobs)]
        if not members:
            return {}
        pipe = self._pipeline()
        for member in members:
            pipe.hgetall(member)
        found: dict[str, dict[str, str]] = {}
        for member, raw in zip(members, pipe.execute(), strict=True):
            if raw:
                data = {k.decode(): v.decode() for k, v in raw.items()}
                found[self.keys.cron_name(member)] = data
        return found

    def cron_fire(
        self,
        name: str,
        job: tuple[str, bytes],
        *,
        claim: tuple[str, float] | None,
        prune_before: float,
        last_enqueue_time: str,
        history: bytes,
        keep_history: int,
    ) -> bool:
        """Claim the tick ``claim`` (member, score) and push ``job`` (queue, raw), in one step.

        ``claim`` None pushes without claiming (the Web UI's "Enqueue now"). Also
        records ``last_enqueue_time`` and the jid ``history`` (trimmed to
        ``keep_history``) and drops claims scored below ``prune_before``. False if the
        tick was already claimed (by another kiq process or sidekiq-cron): nothing is
        written. A Redis error leaves nothing written, so the tick is tried again.
        """
        queue, raw = job
        member, score = claim or ("", 0.0)
        keys = [
            self.keys.cron_enqueued(name),
            self.keys.queues,
            self.keys.queue(queue),
            self.keys.cron_job(name),
            self.keys.cron_history(name),
        ]
        args: list[str | bytes | int] = [member, repr(score), queue, raw, last_enqueue_time]
        args += [history, keep_history, repr(prune_before)]
        return bool(self._script("cron_fire")(keys=keys, args=args))
