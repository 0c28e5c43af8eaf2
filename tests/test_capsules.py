"""Capsules (issue 14, points 1 and 3): Sidekiq 7's named pools in one kiq process.

The three spellings (YAML ``:capsules:``, ``Config.capsule`` in code, ``-g`` on the
command line) and their errors; two capsules of one real worker process, one full of
blocked jobs while the other drains; the heartbeat as Sidekiq's API reads it (Ruby
Sidekiq 6.4 through tests/interop/ruby/api.rb, and Sidekiq 8's ``capsules`` shape);
the start-up refusal of a job of the wrong kind for its capsule.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

import kiq.api
from kiq.capsule import Capsule, parse_flag
from kiq.config import Config
from kiq.errors import ConfigError
from tests.support import capsule_jobs
from tests.support.jobs import identity_of
from tests.support.needs import needs_binary, needs_ruby_gem
from tests.support.wait import wait_until

# -- spellings ---------------------------------------------------------------------------

IO = Capsule("io", (("io", 0), ("webhooks", 2)), 1000, "async")


@pytest.mark.parametrize("colon", [":", ""])
def test_yaml_capsules_read_with_or_without_leading_colons(tmp_path: Path, colon: str) -> None:
    """Sidekiq 7's ``:capsules:`` mapping becomes Config.capsules; the top level stays
    the default capsule."""
    file = tmp_path / "sidekiq.yml"
    file.write_text(
        f"{colon}concurrency: 5\n{colon}queues: [default]\n{colon}capsules:\n"
        f"  {colon}io:\n    {colon}queues: [io, [webhooks, 2]]\n"
        f"    {colon}concurrency: 1000\n    {colon}mode: async\n"
        f"  {colon}single:\n    {colon}queues: [single]\n    {colon}concurrency: 1\n"
    )

    config = Config.load(file, env={})

    assert config.capsules == [IO, Capsule("single", (("single", 0),), 1, "thread")]
    assert config.all_capsules()[0] == Capsule("default", (("default", 0),), 5, "thread")
    assert config.total_concurrency == 1006


def test_default_in_the_capsules_mapping_is_the_top_level_capsule(tmp_path: Path) -> None:
    """A capsule named ``default`` (file or ``-g``) sets the top-level queues, concurrency
    and mode: ``-g default:default:500:async`` makes the whole process an async one."""
    file = tmp_path / "kiq.yml"
    file.write_text("capsules:\n  default:\n    queues: [a]\n    concurrency: 3\n    mode: async\n")

    config = Config.load(file, env={})
    flagged = Config(capsules=[parse_flag("default:default:500:async")])

    assert (config.queues, config.concurrency, config.default_mode) == ([("a", 0)], 3, "async")
    assert config.capsules == []
    assert flagged.all_capsules() == [Capsule("default", (("default", 0),), 500, "async")]


def test_capsule_in_code_returns_it_and_validates() -> None:
    """``config.capsule(name, queues=, concurrency=, mode=)`` adds or changes a capsule."""
    config = Config()

    cap = config.capsule("io", queues=["io", ("webhooks", 2)], concurrency=1000, mode="async")
    again = config.capsule("io", concurrency=500)

    assert cap == IO
    assert again == Capsule("io", IO.queues, 500, "async")
    assert config.capsules == [again]
    assert config.total_concurrency == 510


def test_capsule_default_in_code_is_the_top_level_settings() -> None:
    """``capsule("default", ...)`` sets the top-level queues and concurrency (Sidekiq)."""
    config = Config()

    config.capsule("default", queues=["a", "b"], concurrency=3)

    assert (config.queues, config.concurrency, config.capsules) == ([("a", 0), ("b", 0)], 3, [])


def test_refused_capsule_change_leaves_the_config_unchanged() -> None:
    """A capsule that would share a queue with another is refused, all or nothing."""
    config = Config()
    config.capsule("io", queues=["io"], concurrency=10, mode="async")

    with pytest.raises(ConfigError, match="queue 'default' is in capsules 'default' and 'x'"):
        config.capsule("x", queues=["default"])

    assert [c.name for c in config.capsules] == ["io"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("io:io,webhooks=2:1000:async", IO),
        ("reports:reports:2", Capsule("reports", (("reports", 0),), 2, "thread")),
        ("cpu:a=1,b=1:4:thread", Capsule("cpu", (("a", 1), ("b", 1)), 4, "thread")),
    ],
)
def test_flag_spelling(spec: str, expected: Capsule) -> None:
    """``-g NAME:QUEUES:CONCURRENCY[:MODE]``, QUEUES comma-separated, ``q=3`` a weight."""
    assert parse_flag(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("io:io", "a capsule is NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]"),
        ("io:io:10:async:1:2", "a capsule is NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]"),
        ("io:io:10:async:0", "processes 0 must be a whole number >= 1"),
        ("io:io:10:async:two", "processes 'two' must be a whole number >= 1"),
        ("io:io:10:async:", "processes '' must be a whole number >= 1"),
        ("default:default:10:thread:1", "the default capsule .* use --processes N"),
        ("io:io:many", "concurrency 'many' must be a whole number >= 1"),
        ("io:io:0", "concurrency 0 must be a whole number >= 1"),
        ("io:io:10:fibers", "mode 'fibers' is not allowed; use thread"),
        ("io:io=x:10", "weight 'x' of queue 'io' must be a whole number"),
        ("io::10", "queue entry '' needs a name"),
        (":io:10", "capsule name '' must be a non-empty string"),
        ("io:a,a:10", "lists queue 'a' twice"),
    ],
)
def test_bad_flag_spelling_is_one_clear_error(spec: str, message: str) -> None:
    """Each bad ``-g`` spelling names the value and the rule."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_flag(spec)


# -- processes of its own ----------------------------------------------------------------

OWN = Capsule("io", (("io", 0),), 1000, "async", processes=1)


def test_flag_with_processes() -> None:
    """``-g io:io:1000:async:1``: the fifth part is the capsule's own processes."""
    assert parse_flag("io:io:1000:async:1") == OWN
    assert parse_flag("cpu:cpu:4:thread:2").processes == 2
    assert parse_flag("io:io:1000:async").processes is None  # the shared processes


def test_yaml_processes_and_the_process_groups(tmp_path: Path) -> None:
    """``processes: k`` in the file; ``process_groups`` lists what each worker process
    runs: the shared ``:processes:`` many (default and every capsule without its own),
    then each capsule with its own, alone."""
    file = tmp_path / "sidekiq.yml"
    file.write_text(
        ":processes: 2\n:capsules:\n"
        "  io: {queues: [io], concurrency: 1000, mode: async, processes: 1}\n"
        "  cpu: {queues: [cpu], concurrency: 4, processes: 2}\n"
        "  mail: {queues: [mail], concurrency: 5}\n"
    )

    config = Config.load(file, env={})

    assert config.capsules[0] == OWN
    assert config.process_groups() == [
        ("default", "mail"), ("default", "mail"), ("io",), ("cpu",), ("cpu",),
    ]  # fmt: skip
    assert Config().process_groups() == [("default",)]


def test_capsule_processes_in_code_are_kept_by_a_later_change() -> None:
    """``config.capsule(..., processes=1)``; changing only its concurrency keeps them."""
    config = Config()

    config.capsule("io", queues=["io"], concurrency=1000, mode="async", processes=1)
    again = config.capsule("io", concurrency=50)

    assert again == Capsule("io", (("io", 0),), 50, "async", processes=1)
    assert config.process_groups() == [("default",), ("io",)]


@pytest.mark.parametrize("value", ["0", "-1", "two", "yes", "1.5", "[1]"])
def test_bad_yaml_processes_are_refused(tmp_path: Path, value: str) -> None:
    """A capsule's ``processes`` must be a whole number >= 1 (``yes`` is YAML's true)."""
    file = tmp_path / "kiq.yml"
    file.write_text(f"capsules:\n  io:\n    queues: [io]\n    processes: {value}\n")

    with pytest.raises(
        ConfigError, match=r"kiq.yml: capsules: capsule 'io': processes .* must be a whole"
    ):
        Config.load(file, env={})


def test_the_default_capsule_cannot_have_processes_of_its_own(tmp_path: Path) -> None:
    """In code, in the file or built by hand: the default capsule runs in the shared
    processes, and the error names --processes."""
    file = tmp_path / "kiq.yml"
    file.write_text("capsules:\n  default:\n    queues: [a]\n    processes: 2\n")
    hand_made = Capsule("default", (("a", 0),), 3, "thread", processes=2)

    for attempt in (
        lambda: Config().capsule("default", processes=2),
        lambda: Config.load(file, env={}),
        lambda: Config(capsules=[hand_made]),
    ):
        with pytest.raises(ConfigError, match=r"default capsule .* use --processes N"):
            attempt()


def test_a_hand_built_capsule_with_bad_processes_is_refused() -> None:
    """``Config(capsules=[Capsule(..., processes=0)])`` fails as the spellings do."""
    with pytest.raises(ConfigError, match="capsule 'io': processes 0 must be a whole number"):
        Config(capsules=[Capsule("io", (("io", 0),), 10, "async", processes=0)])


def test_cli_flag_with_processes_makes_two_process_groups() -> None:
    """``-g io:io:50:async:1`` without --processes: two worker processes (so kiq worker
    runs under its supervisor), the shared one and io's own."""
    from kiq.cli import build_parser, load_config

    args = build_parser().parse_args(
        ["worker", "-g", "io:io:50:async:1", "--redis-url", "redis://localhost:1/0"]
    )

    config = load_config(args)

    assert config.processes == 1
    assert config.capsules == [Capsule("io", (("io", 0),), 50, "async", processes=1)]
    assert config.process_groups() == [("default",), ("io",)]


def test_launcher_runs_the_named_capsules_only(config: Config) -> None:
    """``Launcher(config, capsules=("io",))`` has io's manager alone and beats its slots;
    a name that is no capsule is refused before anything starts."""
    from kiq.launcher import Launcher

    config.capsule("io", queues=["io"], concurrency=50, mode="async", processes=1)
    with pytest.raises(ConfigError, match=r"capsules=\['nope'\].*\['default', 'io'\]"):
        Launcher(config, capsules=["nope"])
    launcher = Launcher(config, capsules=("io",))
    try:
        info = orjson.loads(launcher._info)
        assert [m.capsule.name for m in launcher.managers] == ["io"]
        assert (info["concurrency"], info["queues"], list(info["capsules"])) == (50, ["io"], ["io"])
    finally:  # never started: release what the constructor made
        launcher.manager.executor.reaper.stop()


def test_bad_yaml_capsule_names_the_file_and_key(tmp_path: Path) -> None:
    """An unknown key in a capsule of the file is refused with the file and the keys."""
    file = tmp_path / "kiq.yml"
    file.write_text("capsules:\n  io:\n    queues: [io]\n    threads: 5\n")

    with pytest.raises(
        ConfigError, match=r"kiq.yml: capsules: 'io' has unknown keys \['threads'\]"
    ):
        Config.load(file, env={})


@pytest.mark.slow
def test_cli_bad_capsule_flag_exits_2_with_one_line(tmp_path: Path) -> None:
    """``kiq worker -g io:io:many`` stops before anything starts: one line, exit 2."""
    from tests.test_cli import run_kiq

    result = run_kiq("worker", "-g", "io:io:many", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("kiq: -g 'io:io:many': capsule 'io': concurrency 'many'")
    assert result.stderr.count("\n") == 1


def test_cli_capsules_and_sidekiqs_tag() -> None:
    """``-g`` with ':' is a capsule, without it Sidekiq's ``-g TAG``."""
    from kiq.cli import build_parser, load_config

    args = build_parser().parse_args(
        ["worker", "-g", "billing", "-g", "io:io:1000:async", "-q", "default", "--redis-url",
         "redis://localhost:1/0"]
    )  # fmt: skip

    config = load_config(args)

    assert config.tag == "billing"
    assert config.capsules == [Capsule("io", (("io", 0),), 1000, "async")]


# -- two capsules in one real worker -----------------------------------------------------


@pytest.mark.slow
def test_blocked_capsule_never_starves_another(config, r, start_worker) -> None:
    """Capsule ``slow`` has every slot held (and more jobs waiting); capsule ``fast``
    drains 300 jobs meanwhile, on its own threads."""
    held = [capsule_jobs.Hold.perform_async() for _ in range(5)]
    worker = start_worker(
        "-q", "default", "-g", "slow:slow:2", "-g", "fast:fast:3", "-r", "capsule_jobs"
    )
    wait_until(lambda: r.llen("cap:held") == 2, timeout=20.0)

    jids = [capsule_jobs.Fast.perform_async(i) for i in range(300)]

    wait_until(lambda: r.llen("cap:fast") == 300, timeout=30.0)
    done = [line.split() for line in r.lrange("cap:fast", 0, -1)]
    assert sorted(jid for jid, _ in done) == sorted(jids)
    threads = {thread for _, thread in done}  # fast's processors, or its idle waiter
    assert all(t.startswith("kiq.fast.processor-") or t == "kiq.waiter-fast" for t in threads)
    assert r.llen("cap:held") == 2  # still blocked: slow's slots never moved
    r.set("cap:release", 1)
    wait_until(lambda: r.llen("cap:held") == 5, timeout=20.0)
    assert sorted(r.lrange("cap:held", 0, -1)) == sorted(held)
    assert worker.stop() == 0


# -- the heartbeat -----------------------------------------------------------------------


@pytest.fixture
def capsuled_worker(config, r, start_worker):
    """A worker with the default capsule (2), an async capsule io (100) and a weighted
    thread capsule slow (3), one job running in slow and one in io; yields its identity
    and the two jids."""
    slow = capsule_jobs.Hold.perform_async()
    io = capsule_jobs.IoProgress.perform_async()
    worker = start_worker(
        "-q", "default", "-c", "2", "-g", "io:io:100:async", "-g", "slow:slow=2,other=1:3",
        "-r", "capsule_jobs",
    )  # fmt: skip
    identity = wait_until(lambda: identity_of(r, worker.pid))
    # Both jobs running: 60 s, as a worker of three capsules starts slowly on a loaded box
    # (20 s was once too short while two test suites shared 2 cores).
    wait_until(lambda: r.hget(identity, "busy") == "2", timeout=60.0)
    yield identity, slow, io
    r.set("cap:release", 1)
    worker.kill()


@pytest.mark.slow
def test_heartbeat_lists_every_capsule(r, capsuled_worker) -> None:
    """``info`` has Sidekiq 7's weights (one per capsule) and 8's ``capsules``; the
    concurrency (info and hash field) is the sum of every capsule's."""
    identity, _, _ = capsuled_worker

    info = orjson.loads(r.hget(identity, "info"))

    assert info["concurrency"] == 105
    assert r.hget(identity, "concurrency") == "105"
    assert info["queues"] == ["default", "io", "slow", "other"]
    assert info["weights"] == [{"default": 0}, {"io": 0}, {"slow": 2, "other": 1}]
    assert info["capsules"] == {
        "default": {"concurrency": 2, "mode": "strict", "weights": {"default": 0}},
        "io": {"concurrency": 100, "mode": "strict", "weights": {"io": 0}},
        "slow": {"concurrency": 3, "mode": "weighted", "weights": {"slow": 2, "other": 1}},
    }
    process = kiq.api.ProcessSet.get(identity)
    assert (process.concurrency, process.queues) == (105, ["default", "io", "slow", "other"])


@pytest.mark.slow
@pytest.mark.interop
def test_busy_jobs_of_every_capsule_as_ruby_reads_them(r, redis_url, capsuled_worker) -> None:
    """Ruby Sidekiq 6.4's ProcessSet sees the summed concurrency and every queue, and its
    Workers (the Busy page) lists the jobs running in both capsules."""
    needs_binary("ruby")
    needs_ruby_gem("sidekiq", require="sidekiq/api", version=("Sidekiq::VERSION", "6."))
    from tests.interop.conftest import Ruby

    identity, slow, io = capsuled_worker

    snapshot = Ruby(redis_url).api()

    (process,) = [p for p in snapshot["processes"] if p["identity"] == identity]
    assert (process["concurrency"], process["busy"]) == (105, 2)
    assert process["queues"] == ["default", "io", "slow", "other"]
    running = {(w["queue"], w["jid"], w["class"]) for w in snapshot["workers"]}
    assert running == {("slow", slow, "CapHold"), ("io", io, "CapIoProgress")}


@pytest.mark.slow
def test_capsule_defined_in_code_runs(config, r, start_worker) -> None:
    """``kiq.get_default().capsule(...)`` in a module the worker imports (-r) starts the
    capsule, as Sidekiq's initializer does."""
    capsule_jobs.IoThread.perform_async()
    worker = start_worker("-q", "default", "-r", "capsule_jobs", env={"CAP_IN_CODE": "1"})

    wait_until(lambda: r.llen("cap:io:threads") == 1, timeout=20.0)

    assert r.lrange("cap:io:threads", 0, -1) == ["kiq.io.asyncio"]
    identity = identity_of(r, worker.pid)
    info = json.loads(r.hget(identity, "info"))
    assert info["capsules"]["io"]["concurrency"] == 50


# -- the start-up check ------------------------------------------------------------------


@pytest.mark.slow
def test_sync_job_routed_to_an_async_capsule_stops_start_up(config, r, start_worker) -> None:
    """A ``def perform`` job whose queue an async capsule serves: exit 2 before the
    first heartbeat, one line naming the job, the capsule and the fix."""
    worker = start_worker(
        "-q", "default", "-g", "io:io:10:async", "-r", "capsule_jobs", env={"CAP_BAD": "1"}
    )

    assert worker.proc.wait(20) == 2
    output = worker.output()
    assert "kiq: CapSyncOnIo has a plain def perform but its queue is served by the async " \
        "capsule 'io'" in output  # fmt: skip
    assert "make perform async def" in output
    assert r.scard("processes") == 0


def test_async_job_in_a_named_thread_capsule_is_a_start_up_error() -> None:
    """The reverse: an ``async def`` job whose queue is a named thread capsule's."""
    from kiq.manager import check_kinds

    config = Config()
    config.capsule("io", queues=["io"], concurrency=5)  # thread mode: Io is async def

    with pytest.raises(ConfigError, match="CapIo has async def perform but its queue is served"):
        check_kinds(config)
