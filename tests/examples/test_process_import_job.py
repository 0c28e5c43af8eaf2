"""ProcessImportJob and GeocodingJob (the brief's pattern 4: a batch of row jobs, then a
summary mail when the batch succeeds)."""

from __future__ import annotations

from types import ModuleType

import pytest
from brief_app.jobs import (
    CalculateMetricsJob,
    GeocodingJob,
    ImportCompletedJob,
    ImportFailedJob,
    ImportRowJob,
    MailDeliveryJob,
    ProcessImportJob,
)
from brief_app.models import Entity, Import
from brief_app.services import imports
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kiq
from kiq.launcher import Launcher
from tests.examples import factories
from tests.examples.conftest import App
from tests.support.wait import wait_until

CSV = """name,address,phone
Café Flore,172 Boulevard Saint-Germain,01 45 48 55 26
,no name here,
Shakespeare and Company,37 Rue de la Bûcherie,
Louvre,Rue de Rivoli,01 40 20 50 50
"""


def entity_ids(session: Session, record: Import) -> list[int]:
    return list(
        session.scalars(select(Entity.id).where(Entity.import_id == record.id).order_by(Entity.id))
    )


def reload(session: Session, record: Import) -> Import:
    session.expire_all()
    return session.get_one(Import, record.id)


def run_import(record: Import) -> None:
    """The import job, then its row jobs, as a worker would (fake mode: drained)."""
    ProcessImportJob().perform(record.id)
    ImportRowJob.drain()


def test_opens_a_batch_with_one_row_job_per_csv_row(session: Session, kiq_fake: ModuleType) -> None:
    """Four rows, four ImportRowJobs, all in the import's batch; nothing done yet."""
    record = factories.import_(session, factories.user(session), CSV)

    ProcessImportJob().perform(record.id)

    assert [job["args"][1] for job in ImportRowJob.jobs] == [1, 2, 3, 4]
    assert {job["bid"] for job in ImportRowJob.jobs} == {f"import-{record.id}"}
    status = kiq.BatchStatus(f"import-{record.id}")
    assert (status.total, status.pending) == (4, 4)
    assert reload(session, record).status == "processing"
    assert ImportCompletedJob.jobs == []


def test_creates_an_entity_per_valid_row_then_mails_the_summary(
    session: Session, kiq_fake: ModuleType
) -> None:
    """Three valid rows become entities; the batch's success runs the summary once."""
    record = factories.import_(session, factories.user(session), CSV)

    run_import(record)

    assert reload(session, record).status == "processing"  # the summary has not run yet
    (summary,) = ImportCompletedJob.jobs
    assert summary["args"] == [f"import-{record.id}", {"import_id": record.id, "rows": 4}]
    ImportCompletedJob.drain()
    record = reload(session, record)
    assert (record.status, record.processed_count, record.invalid_count) == ("completed", 3, 1)
    names = session.scalars(select(Entity.name).where(Entity.import_id == record.id))
    assert sorted(names) == ["Café Flore", "Louvre", "Shakespeare and Company"]
    assert [job["args"] for job in MailDeliveryJob.jobs] == [
        ["ImportMailer", "completed", record.id]
    ]


def test_enqueues_geocoding_and_metrics_for_each_entity(
    session: Session, kiq_fake: ModuleType
) -> None:
    """Each created entity gets a GeocodingJob and a CalculateMetricsJob."""
    record = factories.import_(session, factories.user(session), CSV)

    run_import(record)

    expected = [[i] for i in entity_ids(session, record)]
    assert [job["args"] for job in GeocodingJob.jobs] == expected
    assert [job["args"] for job in CalculateMetricsJob.jobs] == expected


def test_drain_runs_the_whole_import_deterministically(
    session: Session, kiq_fake: ModuleType
) -> None:
    """``drain`` runs the rows, the batch's callback and the mail: one summary."""
    record = factories.import_(session, factories.user(session), CSV)

    ProcessImportJob().perform(record.id)
    kiq_fake.drain_all()

    assert reload(session, record).status == "completed"
    assert kiq.BatchStatus(f"import-{record.id}").success


def test_is_idempotent(session: Session, kiq_fake: ModuleType) -> None:
    """Run twice, the import fills the same batch; its entities exist once, one summary."""
    record = factories.import_(session, factories.user(session), CSV)

    ProcessImportJob().perform(record.id)
    ProcessImportJob().perform(record.id)
    kiq_fake.drain_all()

    assert len(entity_ids(session, record)) == 3
    assert kiq.BatchStatus(f"import-{record.id}").total == 8  # both runs' row jobs
    ProcessImportJob().perform(record.id)  # completed: nothing more
    assert ImportRowJob.jobs == []


def test_a_row_that_fails_for_good_marks_the_import_failed(
    session: Session, kiq_fake: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row job that dies fires the batch's death: the import is failed, the user told,
    and no summary is sent; the rows that succeeded keep their entities."""
    record = factories.import_(session, factories.user(session), CSV)
    real = imports.create_entity

    def fail_on_row_four(
        session: Session, record: Import, row: int, data: dict[str, str]
    ) -> Entity:
        if row == 4:
            raise OSError("disk full")
        return real(session, record, row, data)

    monkeypatch.setattr(imports, "create_entity", fail_on_row_four)
    ProcessImportJob().perform(record.id)
    with pytest.raises(OSError, match="disk full"):
        ImportRowJob.drain()
    ImportRowJob.drain()
    ImportFailedJob.drain()

    failed = reload(session, record)
    assert (failed.status, failed.error_message) == ("failed", "disk full")
    assert MailDeliveryJob.jobs[-1]["args"] == ["ImportMailer", "failed", record.id]
    assert ImportCompletedJob.jobs == []
    assert len(entity_ids(session, record)) == 2


def test_deleted_import_returns_quietly(kiq_fake: ModuleType) -> None:
    """A job for an import that no longer exists raises nothing and enqueues nothing."""
    ProcessImportJob().perform(999)

    assert kiq_fake.jobs() == []


def test_upload_enqueues_the_import_after_saving_it(session: Session, kiq_fake: ModuleType) -> None:
    """services.imports.upload commits the row, then enqueues ProcessImportJob with its id."""
    import_id = imports.upload(session, factories.user(session).id, "places.csv", CSV)

    (job,) = ProcessImportJob.jobs
    assert (job["args"], job["queue"], job["retry"]) == ([import_id], "imports", 3)


def test_geocoding_is_idempotent_and_skips_deleted_entities(session: Session) -> None:
    """An entity is located once (a second run changes nothing); a missing id is skipped."""
    entity = factories.entity(session, address="1 Rue de Rivoli")

    GeocodingJob().perform(entity.id)
    session.refresh(entity)
    first = (entity.latitude, entity.longitude)
    GeocodingJob().perform(entity.id)
    GeocodingJob().perform(entity.id + 1000)

    session.refresh(entity)
    assert first[0] is not None
    assert (entity.latitude, entity.longitude) == first


def test_import_through_a_worker(session: Session, app: App, worker: Launcher) -> None:
    """Uploaded for real, the import's batch runs: entities located and scored, the
    summary mailed once the batch succeeded."""
    owner = factories.user(session, email="owner@example.com")

    import_id = imports.upload(session, owner.id, "places.csv", CSV)

    wait_until(lambda: app.mailbox.to("owner@example.com"), timeout=15)

    def cascade_done() -> bool:
        session.expire_all()
        query = select(func.count()).where(
            Entity.import_id == import_id,
            Entity.latitude.is_not(None),
            Entity.average_score.is_not(None),
        )
        return session.scalar(query) == 3

    wait_until(cascade_done, timeout=15)
    assert app.mailbox.to("owner@example.com")[0]["Subject"] == "Import of places.csv completed"
