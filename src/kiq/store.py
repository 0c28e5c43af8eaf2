"""Store: kiq's one seam to Redis, and every engine write or atomic operation.

This is the only module that imports ``redis`` (with its helper ``kiq.lane``). It is
built from a URL and knows nothing of Config; components reach it as ``config.store``.
Key names come from ``keys.Keys`` only.

Tasks:
  1. connect: a thread-safe pool for ordinary commands and a second pool whose read
     timeout allows blocking pops, both RESP2 (Redis 6.2+, Valkey 7.2+), with
     timeouts so nothing hangs forever; errors name the URL without its password.
     URLs: redis://, rediss:// (TLS; ``?ssl_ca_certs=<file>`` and the other redis-py
     ``ssl_*`` arguments in the query), unix://, and redis+sentinel:// (``connect``).
  2. push / schedule: Sidekiq's writes (SADD queues + LPUSH, or ZADD schedule).
  3. fetch: one Lua round trip that acknowledges finished jobs and moves up to N new
     ones from the queues into this process's in-progress lists (at-least-once:
     a taken job is always in Redis until acknowledged).
  4. wait: BLMOVE from one queue into its in-progress list, for idle workers.
  5. requeue, zpop_due, retry/dead writes, heartbeat, orphan recovery primitives.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError as WatchError  # re-exported: recover's transaction

from kiq.errors import RedisUnavailable
from kiq.keys import PROCESS_TTL, STAT_TTL, Keys
from kiq.lane import AsyncLane, Lane

SOCKET_TIMEOUT: Final = 5.0  # seconds a command may take before RedisUnavailable
CONNECT_TIMEOUT: Final = 5.0  # seconds to open a connection
BLOCK_SLACK: Final = 5.0  # extra read time allowed on top of a blocking pop's own timeout

# Errors that mean "Redis is away, failed over, loading, out of memory or busy": the same
# command may succeed later, so callers keep the job where it is, back off and retry
# (issue 12). BusyLoadingError (LOADING) is a ConnectionError in redis-py; OOM, MASTERDOWN
# and TRYAGAIN are ResponseErrors of their own class; BUSY (a script running past
# lua-time-limit) has no class and is recognised by ``is_transient``.
TRANSIENT_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    MasterDownError,
    TryAgainError,
    OSError,
)


def is_transient(exc: BaseException) -> bool:
    """True for an error the same command may not raise again later (see TRANSIENT_ERRORS)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(("BUSY", "LOADING", "OOM"))


def is_wrong_type(exc: BaseException) -> bool:
    """True for WRONGTYPE: a key holds another type than kiq expects (a bad key, not an
    outage): the caller skips that one key loudly and goes on with the others."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


# KEYS: queue:q1, inprogress:q1, queue:q2, inprogress:q2, ... (fetch order)
# ARGV: max jobs to take, number of acks, then per ack: its in-progress key, its raw job.
# Acks first, so one round trip both frees and refills a process's slots.
# Replies: (queue number, job) per job taken, led by 0, n, then n pairs (queue number,
# error) if n queues were skipped because their key (or in-progress key) holds another
# type: the other queues are still served (issue 12). A script's writes are not rolled
# back when it fails, so a WRONGTYPE must not abort it halfway: pcall, and jobs popped
# but not stored in in-progress go straight back to the tail they came from.
_FETCH: Final = """
local want = tonumber(ARGV[1])
local nacks = tonumber(ARGV[2])
for i = 1, nacks do
  redis.pcall('LREM', ARGV[1 + 2 * i], -1, ARGV[2 + 2 * i])
end
local out = {}
if want <= 0 then return out end
local bad = {}
for i = 1, #KEYS, 2 do
  local items = redis.pcall('RPOP', KEYS[i], want)
  if type(items) == 'table' and items.err then
    bad[#bad + 1] = (i + 1) / 2
    bad[#bad + 1] = KEYS[i] .. ': ' .. items.err
  elseif items then
    local pushed = redis.pcall('LPUSH', KEYS[i + 1], unpack(items))
    if type(pushed) == 'table' and pushed.err then
      for j = #items, 1, -1 do redis.call('RPUSH', KEYS[i], items[j]) end
      bad[#bad + 1] = (i + 1) / 2
      bad[#bad + 1] = KEYS[i + 1] .. ': ' .. pushed.err
    else
      for _, item in ipairs(items) do
        out[#out + 1] = (i + 1) / 2
        out[#out + 1] = item
      end
      want = want - #items
      if want <= 0 then break end
    end
  end
end
if #bad == 0 then return out end
local reply = {0, #bad / 2}
for _, v in ipairs(bad) do reply[#reply + 1] = v end
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
"""

# KEYS[1]: schedule or retry, KEYS[2]: queues, KEYS[3]: queue:<q>; ARGV[1]: the member as
# read from KEYS[1], ARGV[2]: the job to push ("" = push nothing), ARGV[3]: <q>.
# Sidekiq's scheduled.rb pops the member, then pushes it: a process killed in between
# loses the job. Here the removal and the push are one step, and only the poller whose
# ZREM succeeds pushes, so racing pollers still push each job once.
_MOVE_DUE: Final = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('LPUSH', KEYS[3], ARGV[2])
end
return 1
"""

# KEYS[1]: in-progress list, KEYS[2]: its queue. Newest first onto the tail, so the
# oldest unfinished job ends up at the tail and is fetched next (Sidekiq: RPUSH).
_REQUEUE_ALL: Final = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
"""

# KEYS[1]: in-progress list, KEYS[2]: queue; ARGV: raw jobs to put back at the tail,
# oldest first. Pushed newest first, so the oldest ends at the tail and is fetched next.
_REQUEUE: Final = """
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and errors.

    Works on every URL kiq takes, including Sentinel URLs with several hosts (which
    ``urlsplit`` cannot parse a port from) and ``?password=`` query arguments.
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        netloc, slash, tail = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.partition(":")[0]
            url = f"{scheme}://{user}:***@{hosts}{slash}{tail}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*")
SENTINEL_SCHEME: Final = "redis+sentinel://"


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """``redis+sentinel://[user:pass@]host:port[,host:port...]/<service>[/<db>]``.

    The user and password are the primary's (the Sentinels themselves are asked without
    a password); ``service`` is the name given to ``sentinel monitor``.
    """

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        rest = url.removeprefix(SENTINEL_SCHEME)
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels: list[tuple[str, int]] = []
        for host in filter(None, hosts.split(",")):
            name, colon, port = host.rpartition(":")
            if not colon or not port.isdigit():
                name, port = host, "26379"
            sentinels.append((name, int(port)))
        service, _, db = path.partition("?")[0].strip("/").partition("/")
        if not sentinels or not service or (db and not db.isdigit()):
            raise ValueError(
                f"{redact(url)} is not a Sentinel URL; use "
                f"redis+sentinel://[user:password@]host:port[,host:port]/<service_name>[/<db>]"
            )
        return cls(sentinels, service, int(db or 0), username, password)


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``: redis://, rediss:// (TLS), unix:// or redis+sentinel://.

    For a Sentinel URL the client asks the Sentinels for the primary of the service and
    asks again after a failover (redis-py's ``Sentinel.master_for``), so a READONLY
    from a demoted primary turns into a reconnect to the new one.
    """
    if not url.startswith(SENTINEL_SCHEME):
        return redis.Redis.from_url(url, **options)
    parsed = SentinelURL.parse(url)
    timeouts: dict[str, Any] = {
        k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options
    }
    # redis-py 8.2 typed Sentinel; 8.1 and older did not (hence unused-ignore).
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        parsed.sentinels, sentinel_kwargs=timeouts
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        parsed.service,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return client


def connect_async(url: str, **options: Any) -> redis.asyncio.Redis:
    """The asyncio twin of ``connect``."""
    if not url.startswith(SENTINEL_SCHEME):
        return redis.asyncio.Redis.from_url(url, **options)
    parsed = SentinelURL.parse(url)
    timeouts: dict[str, Any] = {
        k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options
    }
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        parsed.sentinels, sentinel_kwargs=timeouts
    )
    client: redis.asyncio.Redis = sentinel.master_for(
        parsed.service,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return client


class Store:
    """Redis access for the engine.

    Example::

        store = Store("redis://localhost:6379/0", keys=Keys())
        store.push([("default", b'{"class":"HardJob","args":[1],...}')])
    """

    def __init__(
        self,
        url: str,
        *,
        keys: Keys | None = None,
        pool_size: int = 20,
        socket_timeout: float = SOCKET_TIMEOUT,
        block_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.safe_url = redact(url)
        self.keys = keys or Keys()
        common: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "protocol": 2,
            "health_check_interval": 30,
        }
        if not url.startswith("unix:"):
            common["socket_keepalive"] = True  # unix sockets take no keepalive option
        self.redis: redis.Redis = connect(
            url,
            socket_timeout=socket_timeout,
            max_connections=pool_size,
            **common,
        )
        self.blocking: redis.Redis = connect(
            url, socket_timeout=block_timeout + BLOCK_SLACK, **common
        )
        self.block_timeout = block_timeout
        self._fetch = self.redis.register_script(_FETCH)
        self._move_due = self.redis.register_script(_MOVE_DUE)
        self._requeue_all = self.redis.register_script(_REQUEUE_ALL)
        self._requeue = self.redis.register_script(_REQUEUE)
        self._lane = Lane(self.redis.connection_pool)
        self._wait_lanes = threading.local()  # a Lane per waiter thread (see wait)
        self._async_lanes: weakref.WeakKeyDictionary[Any, AsyncLane] = weakref.WeakKeyDictionary()
        self._async_clients: weakref.WeakKeyDictionary[Any, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def close(self) -> None:
        self._lane.close()
        self.redis.close()
        self.blocking.close()

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn connection errors and READONLY into RedisUnavailable naming the URL."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            raise self.unavailable(exc) from exc

    def unavailable(self, exc: BaseException) -> RedisUnavailable:
        """The RedisUnavailable for a connection error or READONLY, saying how to fix it."""
        if isinstance(exc, ReadOnlyError):
            return RedisUnavailable(
                f"Redis at {self.safe_url} is a read-only replica ({exc}): a failover is in "
                f"progress or the URL names a replica. Retry shortly, or point the URL at the "
                f"primary (or at Sentinel: redis+sentinel://host:26379/<service>)."
            )
        return RedisUnavailable(
            f"cannot reach Redis at {self.safe_url}: {str(exc).rstrip('.')}. Check that the server "
            f"runs and REDIS_URL / KIQ_REDIS_URL points at it (connect timeout "
            f"{CONNECT_TIMEOUT:g}s, command timeout {SOCKET_TIMEOUT:g}s)."
        )

    # -- client side ------------------------------------------------------------------
    def push(self, jobs: Sequence[tuple[str, bytes]]) -> None:
        """SADD queues + LPUSH queue:<q>, one round trip for all jobs (Sidekiq: atomic_push).

        The client's hot path (issue 5: perform_async one call at a time): the write
        goes on the lane's held connection, or on the pool (packed commands, without
        redis-py's Pipeline object) while another thread holds the lane. Plain
        try/except rather than the ``translate_errors`` context manager: a web app
        enqueues on cold caches, where each layer of Python shows.
        """
        by_queue: dict[str, list[bytes]] = {}
        for queue, raw in jobs:
            by_queue.setdefault(queue, []).append(raw)
        commands: list[tuple[Any, ...]] = [("SADD", self.keys.queues, *by_queue)]
        commands += [("LPUSH", self.keys.queue(q), *raws) for q, raws in by_queue.items()]
        try:
            self._retry_once_on_failover(self._call, commands)
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            raise self.unavailable(exc) from exc

    def _call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One round trip: on the lane, or on the pool while another thread holds it."""
        replies = self._lane.call(commands)
        return self._call_pooled(commands) if replies is None else replies

    def _call_pooled(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
            return [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # drop a half-read reply
            raise
        finally:
            pool.release(conn)

    async def apush(
        self, immediate: Sequence[tuple[str, bytes]], scheduled: Sequence[tuple[float, bytes]]
    ) -> None:
        """The asyncio form of push + schedule, for ``AsyncClient`` (one round trip)."""
        client = self._async_client()
        by_queue: dict[str, list[bytes]] = {}
        for queue, raw in immediate:
            by_queue.setdefault(queue, []).append(raw)
        commands: list[tuple[Any, ...]] = []
        if by_queue:
            commands.append(("SADD", self.keys.queues, *by_queue))
            commands += [("LPUSH", self.keys.queue(q), *raws) for q, raws in by_queue.items()]
        if scheduled:
            flat = [part for at, raw in scheduled for part in (repr(float(at)), raw)]
            commands.append(("ZADD", self.keys.schedule, *flat))
        # As in push(): the loop's lane, or packed commands on a pooled connection when
        # another coroutine holds it; one round trip either way, no Pipeline object.
        try:
            if await self._async_lane(client).call(commands) is None:
                await self._acall_pooled(client, commands)
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            with self.translate_errors():
                raise exc

    @staticmethod
    async def _acall_pooled(client: redis.asyncio.Redis, commands: list[tuple[Any, ...]]) -> None:
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def _async_lane(self, client: redis.asyncio.Redis) -> AsyncLane:
        lane = self._async_lanes.get(client)
        if lane is None:
            lane = self._async_lanes[client] = AsyncLane(client.connection_pool, SOCKET_TIMEOUT)
        return lane

    def _async_client(self) -> redis.asyncio.Redis:
        # One asyncio client per event loop: redis.asyncio connections are bound to the
        # loop that opened them, and a web app may run several loops over its life.
        import asyncio  # local: the sync engine never needs it

        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = connect_async(
                self.url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                protocol=2,
            )
            self._async_clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the running loop's asyncio client (an ASGI lifespan's shutdown calls this).

        Its connections are bound to the loop; left open when the loop ends, they are
        reported as unclosed when garbage-collected (ResourceWarning).
        """
        import asyncio

        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            lane = self._async_lanes.pop(client, None)
            if lane is not None:
                await lane.close()
            await client.aclose()

    def schedule(self, jobs: Sequence[tuple[float, bytes]]) -> None:
        """ZADD schedule <at> <job> for each job (the member carries no ``at``)."""
        mapping = {raw: at for at, raw in jobs}
        with self.translate_errors():
            self._retry_once_on_failover(self.redis.zadd, self.keys.schedule, mapping)

    def _retry_once_on_failover(self, fn: Any, *args: Any) -> Any:
        # Sidekiq client.rb: after a failover the old primary answers READONLY;
        # reconnecting once reaches the new one.
        try:
            return fn(*args)
        except ReadOnlyError:
            self.redis.connection_pool.disconnect()
            return fn(*args)

    # -- fetch ------------------------------------------------------------------------
    def fetch(
        self,
        identity: str,
        queues: Sequence[str],
        count: int,
        acks: Sequence[tuple[str, bytes]] = (),
        skipped: list[tuple[str, str]] | None = None,
    ) -> list[tuple[str, bytes]]:
        """Acknowledge ``acks`` (queue, raw) and take up to ``count`` jobs, in queue order.

        A queue whose key (or in-progress key) holds another type is left out and, if
        ``skipped`` is given, added to it as (queue, "<key>: <Redis's error>").
        """
        keys: list[str] = []
        for queue in queues:
            keys.append(self.keys.queue(queue))
            keys.append(self.keys.inprogress(identity, queue))
        args: list[Any] = [count, len(acks)]
        for queue, raw in acks:
            args.append(self.keys.inprogress(identity, queue))
            args.append(raw)
        reply = self._fetch(keys=keys, args=args)
        if reply and reply[0] == 0:  # rare: queues left out (see _FETCH)
            end = 2 + 2 * int(reply[1])
            if skipped is not None:
                for i in range(2, end, 2):
                    skipped.append((queues[int(reply[i]) - 1], bytes(reply[i + 1]).decode()))
            reply = reply[end:]
        return [(queues[int(reply[i]) - 1], reply[i + 1]) for i in range(0, len(reply), 2)]

    def wait(self, identity: str, queue: str) -> bytes | None:
        """Block up to ``block_timeout`` for one job, moved straight into in-progress."""
        # On the calling thread's own lane: a waiter's BLMOVE reply is the start of an
        # idle worker's enqueue-to-start latency, and the lane reads it with the least
        # Python in between (issue 5). Redis 6+ takes a float timeout.
        lane: Lane | None = getattr(self._wait_lanes, "lane", None)
        if lane is None:
            # No resend: a waiter is woken on stop by closing its connection, and must
            # not block again; it retries in its own loop (kiq.fetch, _wait_one).
            lane = self._wait_lanes.lane = Lane(self.blocking.connection_pool, resend=False)
        source, target = self.keys.queue(queue), self.keys.inprogress(identity, queue)
        timeout = repr(float(self.block_timeout))
        try:
            replies = lane.call([("BLMOVE", source, target, "RIGHT", "LEFT", timeout)])
            if replies is None:  # no hiredis: the plain client
                replies = [self.blocking.blmove(source, target, timeout, "RIGHT", "LEFT")]  # type: ignore[arg-type]
            result = replies[0]
        except ResponseError as exc:
            # A primary demoted to replica (REPLICAOF, failover) ends every blocked command
            # with "UNBLOCKED ... (master -> replica?)": a failover, not a bug; callers back
            # off and retry as for READONLY (issue 4).
            if str(exc).startswith("UNBLOCKED"):
                raise ReadOnlyError(str(exc)) from exc
            raise
        return result if isinstance(result, bytes) else None

    def ack(self, identity: str, acks: Iterable[tuple[str, bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for queue, raw in acks:
            pipe.lrem(self.keys.inprogress(identity, queue), -1, raw)  # type: ignore[arg-type]
        pipe.execute()

    def requeue(self, identity: str, queue: str, raws: Sequence[bytes]) -> int:
        """Move these unfinished jobs (oldest first) from in-progress back to the tail of
        their queue, so they are fetched again in their original order."""
        keys = [self.keys.inprogress(identity, queue), self.keys.queue(queue)]
        return int(self._requeue(keys=keys, args=list(raws)))

    def requeue_all(self, identity: str, queues: Iterable[str]) -> int:
        """Move everything still in this identity's in-progress lists back to its queues."""
        moved = 0
        for queue in queues:
            keys = [self.keys.inprogress(identity, queue), self.keys.queue(queue)]
            moved += int(self._requeue_all(keys=keys))
        return moved

    def register_fetcher(self, identity: str, queues_json: bytes) -> None:
        self.redis.hset(self.keys.fetchers, identity, queues_json)

    def unregister_fetcher(self, identity: str) -> None:
        self.redis.hdel(self.keys.fetchers, identity)

    # -- scheduled and retry sets ---------------------------------------------------
    def first_due(self, key: str, now: float) -> bytes | None:
        """The member of ``key`` (schedule or retry) with the lowest score <= now, if any."""
        due = self.redis.zrangebyscore(key, "-inf", now, start=0, num=1)
        return due[0] if due else None  # type: ignore[return-value]  # bytes client

    def move_due(self, key: str, member: bytes, job: tuple[str, bytes] | None) -> bool:
        """Remove ``member`` from ``key`` and push ``job`` (queue, raw) in one step.

        ``job`` None only removes it. False if another poller removed it first.
        """
        queue, raw = job or ("", b"")
        keys = [key, self.keys.queues, self.keys.queue(queue)]
        return bool(self._move_due(keys=keys, args=[member, raw, queue]))

    def add_retry(self, at: float, raw: bytes) -> None:
        self.redis.zadd(self.keys.retry, {raw: at})

    def add_dead(self, raw: bytes, now: float, max_jobs: int, timeout: float) -> None:
        """ZADD dead now + both trims in one MULTI (Sidekiq: DeadSet#kill)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.keys.dead, {raw: now})
        pipe.zremrangebyscore(self.keys.dead, "-inf", now - timeout)
        pipe.zremrangebyrank(self.keys.dead, 0, -(max_jobs + 1))
        pipe.execute()

    # -- heartbeat ----------------------------------------------------------------------
    def flush_stats(self, processed: int, failed: int, day: Any) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for kind, count in (("processed", processed), ("failed", failed)):
            if count:
                pipe.incrby(self.keys.stat(kind), count)
                pipe.incrby(self.keys.stat_daily(kind, day), count)
                pipe.expire(self.keys.stat_daily(kind, day), STAT_TTL)
        if len(pipe):
            pipe.execute()

    def beat(
        self,
        identity: str,
        fields: dict[str, Any],
        work: dict[str, bytes],
        ttl: int = PROCESS_TTL,
        fetcher_queues: bytes | None = None,
    ) -> tuple[bool, bytes | None, frozenset[str]]:
        """One heartbeat round trip: the process and busy-jobs hashes, this process's
        in-progress registration, one remote signal and the paused queues.

        Returns (the process hash existed before, the signal or None, paused queues).
        """
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        for work_key in (k.work(identity), k.workers(identity)):
            pipe.unlink(work_key)
            if work:
                pipe.hset(work_key, mapping=work)  # type: ignore[arg-type]
                pipe.expire(work_key, ttl)
        pipe.sadd(k.processes, identity)
        pipe.exists(k.process(identity))
        pipe.hset(k.process(identity), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(k.process(identity), ttl)
        if fetcher_queues is not None:
            pipe.hset(k.fetchers, identity, fetcher_queues)
        pipe.rpop(k.signals(identity))
        pipe.smembers(k.paused)
        replies = pipe.execute()
        exists_at = -6 if fetcher_queues is not None else -5
        paused = frozenset(p.decode() if isinstance(p, bytes) else p for p in replies[-1])
        return bool(replies[exists_at]), replies[-2], paused

    def clear_process(self, identity: str) -> None:
        """At exit: SREM processes, drop busy hashes; the hash itself is left to expire."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(k.processes, identity)
        pipe.unlink(k.work(identity), k.workers(identity))
        pipe.hset(k.process(identity), "quiet", "true")
        pipe.execute()

    def rtt_us(self) -> int:
        started = time.perf_counter()
        self.redis.ping()
        return int((time.perf_counter() - started) * 1_000_000)
