"""The store's connection to Redis: URLs, pools, error sorting, failover retry, scripts.

Why one file: every other file of the store package issues commands through what is
built here, so how kiq connects (TLS, unix sockets, Sentinel, timeouts, RESP2), how
it names an outage (``RedisUnavailable`` with the URL minus its password) and how it
runs a Lua script (``lua/<name>.lua``, loaded once, EVALSHA with a NOSCRIPT fallback
through redis-py's ``register_script``) are decided once.

Tasks:
  1. connect: a thread-safe pool for ordinary commands and a second pool whose read
     timeout allows blocking pops, both RESP2 (Redis 6.2+, Valkey 7.2+), with
     timeouts so nothing hangs forever; errors name the URL without its password.
     URLs: redis://, rediss:// (TLS; ``?ssl_ca_certs=<file>`` and the other redis-py
     ``ssl_*`` arguments in the query), unix://, and redis+sentinel:// (``connect``);
     redis+cluster:// opens its clients in kiq.store.cluster (``Connection._open``).
  2. sort errors: ``TRANSIENT_ERRORS`` / ``is_transient`` (wait and retry) versus
     ``is_wrong_type`` (a bad key: skip it loudly).
  3. one round trip of packed commands, on the lane or the pool (``_call``).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.commands.core import Script
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kiq.errors import RedisUnavailable
from kiq.keys import Keys
from kiq.store.lane import Lane

SOCKET_TIMEOUT: Final = 5.0  # seconds a command may take before RedisUnavailable
CONNECT_TIMEOUT: Final = 5.0  # seconds to open a connection
POOL_WAIT: Final = 5.0  # seconds a thread waits for a free pooled connection
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
    # Redis Cluster (docs/cluster.md): a slot without a primary while a replica is being
    # promoted, or not yet in the client's map after a failover.
    ClusterDownError,
    SlotNotCoveredError,
)
# What ``translate_errors`` turns into RedisUnavailable (the URL is away or read-only).
UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


def is_transient(exc: BaseException) -> bool:
    """True for an error the same command may not raise again later (see TRANSIENT_ERRORS)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(
        ("BUSY", "LOADING", "OOM", "CLUSTERDOWN", "TRYAGAIN")
    )


def is_wrong_type(exc: BaseException) -> bool:
    """True for WRONGTYPE: a key holds another type than kiq expects (a bad key, not an
    outage): the caller skips that one key loudly and goes on with the others."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


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


def split_hosts(
    rest: str, default_port: int
) -> tuple[str | None, str | None, list[tuple[str, int]], str]:
    """``[user:password@]host:port[,host:port...]/path`` (a URL after its scheme) as
    (username, password, hosts, path): the multi-host form Sentinel and Cluster URLs
    share. A host without a port gets ``default_port``."""
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for host in filter(None, hosts.split(",")):
        name, colon, port = host.rpartition(":")
        if not colon or not port.isdigit():
            name, port = host, str(default_port)
        nodes.append((name, int(port)))
    return username, password, nodes, path


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
        username, password, sentinels, path = split_hosts(url.removeprefix(SENTINEL_SCHEME), 26379)
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
        if "max_connections" not in options:
            return redis.Redis.from_url(url, **options)
        # A bounded pool that waits (up to POOL_WAIT) for a connection another thread
        # gives back, instead of redis-py's default "Too many connections" error the
        # moment one more thread than the pool holds calls at once.
        pool = redis.BlockingConnectionPool.from_url(url, timeout=POOL_WAIT, **options)
        return redis.Redis(connection_pool=pool)
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


def lua(name: str) -> str:
    """The source of ``lua/<name>.lua`` (shipped in the wheel next to this module)."""
    return (resources.files("kiq.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Connection:
    """The two pools, the lane and the scripts every part of the Store shares.

    The subject files (queues, sets, processes, cron, metrics, progress) each add one
    mixin of methods on top of this; ``kiq.store.Store`` is all of them together.
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
        self.block_timeout = block_timeout
        self._scripts: dict[str, Script] = {}
        self._open(url, common, socket_timeout=socket_timeout, pool_size=pool_size)

    def _open(
        self, url: str, common: dict[str, Any], *, socket_timeout: float, pool_size: int
    ) -> None:
        """The pooled client, the blocking one and the lane (Redis Cluster: its own, in
        kiq.store.cluster)."""
        self._redis: redis.Redis = connect(
            url,
            socket_timeout=socket_timeout,
            max_connections=pool_size,
            **common,
        )
        self._blocking: redis.Redis = connect(
            url, socket_timeout=self.block_timeout + BLOCK_SLACK, **common
        )
        self._lane = Lane(self._redis.connection_pool)

    def _script(self, name: str) -> Script:
        """The script ``lua/<name>.lua``, read once; each call is EVALSHA (NOSCRIPT: load)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(lua(name))
        return script

    def close(self) -> None:
        self._lane.close()
        self._redis.close()
        self._blocking.close()

    @contextlib.contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn connection errors and READONLY into RedisUnavailable naming the URL."""
        try:
            yield
        except UNREACHABLE as exc:
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

    def _retry_once_on_failover(self, fn: Any, *args: Any) -> Any:
        # Sidekiq client.rb: after a failover the old primary answers READONLY;
        # reconnecting once reaches the new one.
        try:
            return fn(*args)
        except ReadOnlyError:
            self._redis.connection_pool.disconnect()
            return fn(*args)

    def _call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One round trip: on the lane, or on the pool while another thread holds it."""
        replies = self._lane.call(commands)
        return self._call_pooled(commands) if replies is None else replies

    def _call_pooled(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pool = self._redis.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
            return [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # drop a half-read reply
            raise
        finally:
            pool.release(conn)

    def _pipeline(self, *, transaction: bool = False) -> Any:
        # Any: redis-py types replies as ``bytes | str`` (or Awaitable); the store's client
        # never decodes, so every reply is bytes and is converted where it is read.
        return self._redis.pipeline(transaction=transaction)

    @property
    def _r(self) -> Any:
        """The pooled client, typed loosely for the same reason as ``_pipeline``."""
        return self._redis

    # -- the server itself ------------------------------------------------------------
    def ping(self) -> None:
        """PING; raises RedisUnavailable (naming the URL) when Redis does not answer."""
        with self.translate_errors():
            self._redis.ping()

    def rtt_us(self) -> int:
        started = time.perf_counter()
        self._redis.ping()
        return int((time.perf_counter() - started) * 1_000_000)

    def info(self) -> dict[str, Any]:
        """The server's INFO (version, memory, clients, maxmemory policy...)."""
        info: dict[str, Any] = self._redis.info()
        return info

    def flushdb(self) -> None:
        """Empty this URL's database (the test fixtures and the demo's own database)."""
        with self.translate_errors():
            self._redis.flushdb()

    def disconnect_waiters(self) -> None:
        """Close every blocking connection, ending any BLMOVE waiting on one now (stop)."""
        self._blocking.connection_pool.disconnect()
