"""ExportDataJob (the brief's pattern 5: progress tracking)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest
from brief_app import settings
from brief_app.errors import UnknownExportType
from brief_app.jobs import ExportDataJob, MailDeliveryJob
from brief_app.models import Export, User
from brief_app.services import exports
from sqlalchemy.orm import Session

import kiq
import kiq.api
from kiq.config import Config
from kiq.job import read_progress
from kiq.launcher import Launcher
from tests.examples import factories
from tests.examples.conftest import App
from tests.support.wait import wait_until

JID = "e" * 24


def owner_with_places(session: Session, places: int) -> User:
    owner = factories.user(session)
    for _ in range(places):
        factories.entity(session, owner_id=owner.id)
    return owner


def run(export_id: int) -> None:
    job = ExportDataJob()
    job.jid = JID
    job.perform(export_id)


def reload(session: Session, export: Export) -> Export:
    session.expire_all()
    return session.get_one(Export, export.id)


def test_writes_the_csv(session: Session, config: Config, kiq_fake: ModuleType) -> None:
    """The file has the brief's header and one line per record; the export is completed."""
    owner = owner_with_places(session, 3)
    export = factories.export(session, owner, "entities")

    run(export.id)

    export = reload(session, export)
    assert (export.status, export.row_count, export.progress) == ("completed", 3, 100.0)
    assert export.file_path is not None
    with Path(export.file_path).open(newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == ["ID", "Name", "Address", "Phone", "Created At"]
    assert len(lines) == 4
    assert not list(Path(export.file_path).parent.glob("*.part"))


def test_progress_is_readable_by_jid(
    session: Session, config: Config, kiq_fake: ModuleType
) -> None:
    """After the export, the job's progress reads 100 % with a count, by its jid."""
    export = factories.export(session, owner_with_places(session, 3), "entities")

    run(export.id)

    progress = read_progress(config, JID)
    assert progress is not None
    assert (progress["percent"], progress["message"]) == (100.0, "3 of 3 records")
    assert progress["class"] == "ExportDataJob"
    assert reload(session, export).jid == JID


def test_progress_moves_while_a_worker_runs_it(
    session: Session, config: Config, worker: Launcher
) -> None:
    """Run by a worker, the progress read by jid passes through values between 0 and 100."""
    owner = owner_with_places(session, 30)
    settings.configure(export_page_size=2, export_page_pause=0.1)  # 15 pages, ~1.5 s

    exports.request(session, owner.id, "entities")

    def midway() -> bool:
        session.expire_all()
        export = session.query(Export).one()
        progress = read_progress(config, export.jid) if export.jid else None
        return progress is not None and 0 < progress["percent"] < 100

    wait_until(midway, timeout=10)
    wait_until(
        lambda: reload(session, session.query(Export).one()).status == "completed", timeout=10
    )


def test_is_idempotent(session: Session, config: Config, kiq_fake: ModuleType) -> None:
    """A completed export is not written again, nor mailed twice."""
    export = factories.export(session, owner_with_places(session, 2), "entities")
    run(export.id)
    path = Path(reload(session, export).file_path or "")
    written = path.stat().st_mtime_ns

    run(export.id)

    assert path.stat().st_mtime_ns == written
    assert len(MailDeliveryJob.jobs) == 1


def test_notifies_the_user(session: Session, config: Config, kiq_fake: ModuleType) -> None:
    """A finished export enqueues ExportMailer.ready for it."""
    export = factories.export(session, owner_with_places(session, 1), "submissions")

    run(export.id)

    assert [job["args"] for job in MailDeliveryJob.jobs] == [["ExportMailer", "ready", export.id]]


def test_an_unknown_type_is_discarded(session: Session, config: Config) -> None:
    """An export of an unknown type is marked failed and discarded: a retry cannot help."""
    export = factories.export(session, factories.user(session), "invoices")

    with pytest.raises(kiq.Discard, match="unknown export type 'invoices'"):
        run(export.id)

    assert reload(session, export).status == "failed"


def test_deleted_export_returns_quietly(kiq_fake: ModuleType) -> None:
    """A job for an export that no longer exists raises nothing and enqueues nothing."""
    run(4242)

    assert kiq_fake.jobs() == []


def test_request_enqueues_the_job(session: Session, kiq_fake: ModuleType) -> None:
    """services.exports.request saves the export and enqueues its id on the exports queue."""
    export_id = exports.request(session, factories.user(session).id, "entities")

    (job,) = ExportDataJob.jobs
    assert (job["args"], job["queue"], job["retry"]) == ([export_id], "exports", 3)


def test_request_refuses_an_unknown_type(session: Session, kiq_fake: ModuleType) -> None:
    """An unknown type is refused when asked for, before any job is enqueued."""
    with pytest.raises(UnknownExportType):
        exports.request(session, factories.user(session).id, "invoices")

    assert ExportDataJob.jobs == []


def test_export_through_a_worker_mails_the_file(
    session: Session, app: App, worker: Launcher
) -> None:
    """Run for real, the export is written and the user gets the "ready" mail."""
    owner = owner_with_places(session, 5)

    exports.request(session, owner.id, "entities")

    (mail,) = wait_until(lambda: app.mailbox.to(owner.email), timeout=15)
    assert mail["Subject"] == "Your entities export is ready"
    assert list(app.export_dir.glob("export_*_entities_*.csv"))


def test_a_worker_restart_resumes_the_export_where_it_stopped(
    session: Session, config: Config, worker: Launcher
) -> None:
    """Stopped mid-export (a deploy), the job saves its cursor and goes back to its queue;
    the next worker writes on from there: every record once, none from row one again."""
    owner = owner_with_places(session, 40)
    settings.configure(export_page_size=2, export_page_pause=0.05)  # 20 pages, ~1 s
    exports.request(session, owner.id, "entities")

    def percent() -> float:
        session.expire_all()
        export = session.query(Export).one()
        progress = read_progress(config, export.jid) if export.jid else None
        return progress["percent"] if progress else 0.0

    wait_until(lambda: percent() >= 20, timeout=15)
    worker.stop()
    export = session.query(Export).one()
    assert reload(session, export).status == "processing"
    state = kiq.api.iterations([export.jid or ""])[export.jid or ""]
    assert state.executions == 1
    assert state.cursor["rows"] > 0
    second = Launcher(config)
    second.start()
    try:
        wait_until(lambda: reload(session, export).status == "completed", timeout=20)
    finally:
        second.stop()
    export = reload(session, export)
    with Path(export.file_path or "").open(newline="") as file:
        ids = [int(line[0]) for line in list(csv.reader(file))[1:]]
    assert len(ids) == 40
    assert len(set(ids)) == 40  # none twice, none skipped
    assert export.row_count == 40
