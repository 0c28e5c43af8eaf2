"""``kiq demo``: this example app, run end to end by a real kiq worker.

It is the README's first command, so it must work from a fresh clone with nothing but
Python and pip (``pip install -e ".[demo]"``) and finish well under a minute. The
runner lives here, with the app it runs, not in the kiq package: ``kiq demo`` imports
it from the ``examples`` folder of a checkout (kiq.cli.run_demo).

  1. check the app's packages (SQLAlchemy, aiosmtpd); if they are missing, say how to
     install them;
  2. Redis: ``KIQ_REDIS_URL``/``REDIS_URL`` when set, else database ``DEMO_DB`` of the
     embedded server (started here, explicitly), the demo's own, emptied first;
  3. start a local SMTP server and a Launcher in this process, with the app's
     ``config/kiq.yml`` queues and ``config/kiq_schedule.yml`` recurring jobs;
  4. seed a SQLite database in a temporary folder; enqueue the brief's six jobs;
  5. draw the export's progress bar and the job counts (``kiq.api``) until no job of
     the app is queued, running, retrying or scheduled; at RESTART_AT percent of the
     export, restart the worker as a deploy would (stop, start a new Launcher): the
     export, an iterable job, saves its cursor and the bar goes on from there;
  6. print what each job did and how to open the Web UI, then stop the worker and
     remove the recurring jobs it registered (``--keep``: serve until Ctrl-C or TERM
     first, so the printed ``kiq web`` command can be used meanwhile).

``--jobs N`` sizes the seeded data so that about N jobs run (default 200).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Final, TextIO

import kiq
from kiq import api, cron
from kiq import log as kiq_log
from kiq.config import Config, set_default
from kiq.errors import ConfigError
from kiq.launcher import Launcher

DEMO_DB: Final = 1  # the embedded server's database kept for the demo (db 0 is yours)
WATCH_LIMIT: Final = 45.0  # seconds of jobs at most: the README promises under a minute
REFRESH: Final = 0.1  # seconds between two screen updates
EXPORT_SECONDS: Final = 3.0  # the export is slowed to last about this long: watch its bar
RESTART_AT: Final = 40.0  # percent of the export at which the demo restarts the worker
WEB_PORT: Final = 7433
INSTALL: Final = 'pip install -e ".[demo]"'
NEEDED: Final = ("sqlalchemy", "aiosmtpd")
APP_DIR: Final = Path(__file__).resolve().parent


@dataclass
class Demo:
    """Everything one run holds; built by ``_start``, torn down by ``_stop``."""

    config: Config
    app: ModuleType  # brief_app
    app_dir: Path
    workdir: Path
    own_db: bool  # True: the embedded server's DEMO_DB, ours to empty
    keep: bool  # --keep: serve after the jobs are done, until Ctrl-C or TERM
    mail_server: Any
    launcher: Launcher
    log_file: TextIO
    seeded: Any = None
    export_jid: str | None = None
    base: tuple[int, int] = (0, 0)  # processed, failed before the demo's jobs
    restarted: str = ""  # what the worker restart showed, once it happened


class Stopped(Exception):
    """SIGTERM arrived: stop as on Ctrl-C, so the worker, the SMTP server and the
    embedded server's lease (released at exit) all end cleanly."""


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def run_demo(args: argparse.Namespace) -> int:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"kiq demo runs the example app, which needs {' and '.join(missing)}: "
            f"install them with {INSTALL}"
        )
    signal.signal(signal.SIGTERM, _on_term)
    keep = bool(getattr(args, "keep", False))
    demo = _start(APP_DIR, keep)
    done = False
    try:
        done = _run(demo, getattr(args, "jobs", 200))
        if keep:
            print(
                "\n--keep: the worker keeps serving, recurring jobs included; Ctrl-C to stop",
                flush=True,
            )
            threading.Event().wait()
    except (KeyboardInterrupt, Stopped):
        print("\nstopping")
    finally:
        _stop(demo)
    print("worker stopped cleanly")
    return 0 if done else 1


def _start(app_dir: Path, keep: bool) -> Demo:
    if str(app_dir.parent) not in sys.path:
        sys.path.insert(0, str(app_dir.parent))
    app = importlib.import_module("brief_app")
    workdir = Path(tempfile.mkdtemp(prefix="kiq-demo-"))
    log_file = (workdir / "kiq-demo.log").open("a")
    kiq_log.setup("plain", verbose=False, stream=log_file)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines
    config = Config.load(
        app_dir / "config" / "kiq.yml",
        heartbeat_interval=0.5,  # counters reach Redis (and the screen) twice a second
        poll_initial_wait=0.0,
        poll_interval_average=0.5,  # retries come back within a second of being due
        timeout=5.0,
        schedule_file=str(app_dir / "config" / "kiq_schedule.yml"),
    )
    own_db = config.redis_url is None
    if own_db:
        config.redis_url = f"{config.ensure_redis()}?db={DEMO_DB}"
        config.store.flushdb()  # this database is the demo's own
    set_default(config)
    mail_server = importlib.import_module("brief_app.mailserver").MailServer().start()
    importlib.import_module("brief_app.settings").configure(
        database_url=f"sqlite:///{workdir / 'app.sqlite3'}",
        smtp_port=mail_server.port,
        export_dir=str(workdir / "exports"),
        mail_retry_delay=2.0,  # the greylisted address is retried 2 s later, not 5 min
    )
    launcher = Launcher(config)
    launcher.start()
    return Demo(config, app, app_dir, workdir, own_db, keep, mail_server, launcher, log_file)


def _stop(demo: Demo) -> None:
    demo.launcher.stop()
    with contextlib.suppress(Exception):  # best effort: never hide why the demo stopped
        names = {job.name for job in cron.load(demo.app_dir / "config" / "kiq_schedule.yml")}
        for entry in api.cron_set(demo.config):
            if entry.name in names:
                entry.delete()  # or the next worker on this Redis would run them
    demo.mail_server.stop()
    importlib.import_module("brief_app.db").dispose()
    for handler in logging.getLogger().handlers:
        handler.flush()
    demo.log_file.close()


def _run(demo: Demo, jobs: int) -> bool:
    config = demo.config
    started = time.monotonic()
    print(f"kiq {kiq.__version__} demo: the brief's example app, run by a real kiq worker\n")
    for line in _setup_lines(demo):
        print(line)
    seeds = importlib.import_module("brief_app.seeds")
    places, rows = _sizes(jobs)
    with _session() as session:
        demo.seeded = seeds.seed(session, places=places, ratings=40, rows=rows)
        before = seeds.report(session, demo.seeded)
    pages = -(-demo.seeded.submissions // 100)
    importlib.import_module("brief_app.settings").configure(
        export_page_pause=EXPORT_SECONDS / max(pages, 1)
    )
    demo.base = _counts(config)[:2]
    print(
        f"\nseeded {demo.seeded.users} users, {places} places with {demo.seeded.submissions:,} "
        f"ratings, a {rows}-row CSV, 5 notifications, old data; enqueued the six jobs:"
    )
    for line in _enqueue(demo):
        print(line)
    print()
    done = _watch(demo, started)
    with _session() as session:
        after = seeds.report(session, demo.seeded)
    demo.launcher.beat()  # flush this process's last counts to Redis before reading them
    counts = _counts(config)
    print()
    for line in _summary(demo, before, after, counts, time.monotonic() - started):
        print(line)
    return done


def _sizes(jobs: int) -> tuple[int, int]:
    """(places, import rows) for about ``jobs`` jobs: one metrics job per place, two
    cascaded jobs per valid import row, and 13 more for the rest."""
    rows = max(10, jobs // 5)
    return max(5, jobs - 2 * (rows - 2) - 13), rows


@contextlib.contextmanager
def _session() -> Iterator[Any]:
    with importlib.import_module("brief_app.db").session() as session:
        yield session


def _setup_lines(demo: Demo) -> list[str]:
    config = demo.config
    where = f"embedded, database {DEMO_DB} (the demo's own)" if demo.own_db else "from your env"
    schedule = cron.load(demo.app_dir / "config" / "kiq_schedule.yml")
    now = datetime.now(UTC)
    first = min(schedule, key=lambda job: job.next_tick(now))
    queues = " ".join(f"{name},{weight}" for name, weight in config.queues)
    return [
        f"  app       {demo.app_dir}",
        f"  Redis     {config.store.safe_url}  {where}",
        f"  SMTP      aiosmtpd on 127.0.0.1:{demo.mail_server.port}, keeping what it receives",
        f"  SQLite    {demo.workdir / 'app.sqlite3'}",
        f"  worker    {config.concurrency} threads, queues {queues} (config/kiq.yml)",
        f"  schedule  {len(schedule)} recurring jobs (config/kiq_schedule.yml); next: "
        f"{first.name} at {first.next_tick(now):%H:%M} UTC",
    ]


def _enqueue(demo: Demo) -> list[str]:
    jobs, seeded = demo.app.jobs, demo.seeded
    entity_ids = [[i] for i in [*seeded.entity_ids, seeded.deleted_entity_id]]
    jobs.CalculateMetricsJob.perform_bulk(entity_ids)
    jobs.SendNotificationJob.perform_bulk([[i] for i in seeded.notification_ids])
    jobs.SendWeeklyDigestJob.perform_async()
    jobs.ProcessImportJob.perform_async(seeded.import_id)
    demo.export_jid = jobs.ExportDataJob.perform_async(seeded.export_id)
    jobs.CleanupOldDataJob.perform_async()
    rows = [
        ("CalculateMetricsJob", len(entity_ids), "one for a place deleted since: returns quietly"),
        ("SendNotificationJob", 5, "an address refused, one greylisted, one user opted out"),
        ("SendWeeklyDigestJob", 1, "fans out a DigestBatchJob per 100 users (perform_bulk)"),
        ("ProcessImportJob", 1, "a batch of row jobs, then a summary mail on success"),
        ("ExportDataJob", 1, f"{seeded.submissions:,} ratings to CSV, reporting progress"),
        ("CleanupOldDataJob", 1, "what the schedule runs at 02:00 every day"),
    ]
    return [
        f"  {n}. {name:<20} x{count:<4} {getattr(jobs, name).options['queue']:<14} {what}"
        for n, (name, count, what) in enumerate(rows, start=1)
    ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    queued: int  # in the app's queues
    taken: int  # fetched by the worker and not yet acknowledged
    pending: int  # the app's jobs in the retry and schedule sets
    next_retry: float | None  # epoch seconds when the app's first retry is due

    @property
    def idle(self) -> bool:
        return not (self.queued or self.taken or self.pending)


def _snapshot(demo: Demo) -> Snapshot:
    """The app's jobs wherever they are, read in the order a job moves (schedule and
    retry sets, then queues, then this worker's in-progress lists), so a job moving
    while the reads go on is seen in its old place or its new one; ``_watch`` also
    asks for two idle views in a row."""
    config = demo.config
    names = [name for name, _ in config.queues]
    classes = {getattr(demo.app.jobs, name).wire_name for name in demo.app.jobs.__all__}
    retries = [e.at.timestamp() for e in api.RetrySet(config) if e.klass in classes]
    scheduled = [e for e in api.ScheduledSet(config) if e.klass in classes]
    queued = sum(api.Queue(name, config).size() for name in names)
    # Jobs fetched and not yet acknowledged (kiq.api has no reader for in-progress lists).
    taken = sum(config.store.in_progress_sizes(demo.launcher.identity, names))
    return Snapshot(queued, taken, len(retries) + len(scheduled), min(retries, default=None))


def _counts(config: Config) -> tuple[int, int, int]:
    """processed, failed, retrying (kiq.api.Stats)."""
    stats = api.Stats(config)
    return int(stats.processed), int(stats.failed), int(stats.retry_size)


def _watch(demo: Demo, started: float) -> bool:
    """Redraw the status until the app is idle twice in a row, or WATCH_LIMIT passes."""
    screen = Screen(sys.stdout)
    idle_views = 0
    deadline = time.monotonic() + WATCH_LIMIT
    while time.monotonic() < deadline:
        _restart_midway(demo)
        snapshot = _snapshot(demo)
        idle_views = idle_views + 1 if snapshot.idle else 0
        screen.show(_status(demo, snapshot, time.monotonic() - started), final=idle_views >= 2)
        if idle_views >= 2:
            return True
        time.sleep(REFRESH)
    screen.show(_status(demo, _snapshot(demo), time.monotonic() - started), final=True)
    print(f"some jobs were still not done after {WATCH_LIMIT:.0f} s; see the log below")
    return False


def _restart_midway(demo: Demo) -> None:
    """Once the export passes RESTART_AT percent, stop the worker and start a new one,
    as a deploy does: the export (an IterableJob) flushes its cursor, goes back to its
    queue at once, and the new worker resumes it from that cursor, not from row one."""
    jid = demo.export_jid or ""
    progress = api.progress([jid], demo.config).get(jid) if jid else None
    if demo.restarted or progress is None or not RESTART_AT <= progress["percent"] < 100:
        return
    demo.launcher.stop()
    state = api.iterations([jid], demo.config).get(jid)
    demo.launcher = Launcher(demo.config)
    demo.launcher.start()
    cursor = state.cursor if state is not None else None
    rows = cursor.get("rows", 0) if isinstance(cursor, dict) else 0
    demo.restarted = (
        f"  restart  worker stopped and started again at {progress['percent']:.0f}% of the "
        f"export: it resumed at record {rows:,} (run {(state.executions if state else 0) + 1}), "
        "not from record one"
    )


def _status(demo: Demo, snapshot: Snapshot, elapsed: float) -> list[str]:
    jid = demo.export_jid or ""
    progress = api.progress([jid], demo.config).get(jid) if jid else None
    percent = progress["percent"] if progress else 0.0
    message = progress["message"] if progress else "waiting for a worker thread"
    processed, failed, retrying = _counts(demo.config)
    due = ""
    if snapshot.next_retry is not None:  # Sidekiq's jitter adds up to 9 s to the first retry
        due = f" (next in {max(0.0, snapshot.next_retry - time.time()):.0f} s)"
    return [
        f"  export   {bar(percent)} {percent:5.1f}%  {message}",
        f"  jobs     processed {processed - demo.base[0]} · failed {failed - demo.base[1]} · "
        f"retrying {retrying}{due} · busy {demo.launcher.manager.busy()} · "
        f"queued {snapshot.queued}   ({elapsed:.1f} s)",
        *([demo.restarted] if demo.restarted else []),
    ]


def bar(percent: float, width: int = 30) -> str:
    filled = round(width * percent / 100)
    full, empty = ("█", "░") if (sys.stdout.encoding or "").lower() == "utf-8" else ("#", ".")
    return f"[{full * filled}{empty * (width - filled)}]"


class Screen:
    """A block of status lines: redrawn in place on a terminal, printed now and then elsewhere."""

    EVERY = 1.0  # seconds between two printed blocks when not on a terminal

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0
        self.printed_at = 0.0

    def show(self, lines: list[str], final: bool = False) -> None:
        if self.tty:
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        elif final or time.monotonic() - self.printed_at >= self.EVERY:
            self.out.write("\n".join(lines) + "\n")
            self.printed_at = time.monotonic()
        self.out.flush()


def _summary(
    demo: Demo,
    before: dict[str, Any],
    after: dict[str, Any],
    counts: tuple[int, int, int],
    elapsed: float,
) -> list[str]:
    notes, digests = after["notifications"], after["digests"]
    import_status, created, invalid = after["import"]
    export_status, records, path = after["export"]
    deleted = ", ".join(
        f"{before['old data'][kind] - count} {kind}" for kind, count in after["old data"].items()
    )
    processed, failed, retrying = counts
    # The embedded URL has no password to hide; the demo's database must be named, and
    # the embedded server runs only as long as a kiq process holds it: --keep's.
    web = f"kiq web --port {WEB_PORT}   then open http://127.0.0.1:{WEB_PORT}"
    if demo.own_db:
        web = f"KIQ_REDIS_URL='{demo.config.redis_url}' {web}"
        if not demo.keep:
            web = f"run kiq demo --keep, and meanwhile: {web}"
    return [
        f"done in {elapsed:.1f} s: {processed - demo.base[0]} jobs processed, "
        f"{failed - demo.base[1]} failed, {retrying} retrying",
        f"  1. metrics        {after['scored']} places scored; the deleted place's job "
        "returned quietly",
        f"  2. notifications  {notes.get('sent', 0)} sent (the greylisted one on its retry), "
        f"{notes.get('skipped', 0)} skipped (opted out), {notes.get('failed', 0)} discarded "
        "(address refused)",
        f"  3. weekly digest  {digests.get('sent', 0)} sent, {digests.get('failed', 0)} refused "
        "without stopping the batch",
        f"  4. import         {import_status}: {created} places created, {invalid} invalid rows "
        f"skipped, {after['geocoded']} geocoded",
        f"  5. export         {export_status}: {records:,} records -> {path}",
        f"  6. cleanup        deleted {deleted}",
        f"  mail              {len(demo.mail_server.mailbox.messages)} messages received by the "
        "SMTP server",
        "",
        f"Web UI:   {web}",
        f"job log:  {demo.workdir / 'kiq-demo.log'}",
    ]
