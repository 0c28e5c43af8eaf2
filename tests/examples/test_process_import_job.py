"""ProcessImportJob and GeocodingJob (the brief's pattern 4: cascading enqueue)."""

from __future__ import annotations

from types import ModuleType

import pytest
from brief_app.jobs import CalculateMetricsJob, GeocodingJob, MailDeliveryJob, ProcessImportJob
from brief_app.models import Entity, Import
from brief_app.services import imports
from sqlalchemy import func, select
from sqlalchemy.orm import Session

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


def test_creates_an_entity_per_valid_row(session: Session, kiq_fake: ModuleType) -> None:
    """Three valid rows become entities; the nameless row is counted as invalid."""
    record = factories.import_(session, factories.user(session), CSV)

    ProcessImportJob().perform(record.id)

    record = reload(session, record)
    assert (record.status, record.processed_count, record.invalid_count) == ("completed", 3, 1)
    names = session.scalars(select(Entity.name).where(Entity.import_id == record.id))
    assert sorted(names) == ["Café Flore", "Louvre", "Shakespeare and Company"]


def test_enqueues_geocoding_and_metrics_for_each_entity(
    session: Session, kiq_fake: ModuleType
) -> None:
    """Each created entity gets a GeocodingJob and a CalculateMetricsJob; the user a mail."""
    record = factories.import_(session, factories.user(session), CSV)

    ProcessImportJob().perform(record.id)

    expected = [[i] for i in entity_ids(session, record)]
    assert [job["args"] for job in GeocodingJob.jobs] == expected
    assert [job["args"] for job in CalculateMetricsJob.jobs] == expected
    assert [job["args"] for job in MailDeliveryJob.jobs] == [
        ["ImportMailer", "completed", record.id]
    ]


def test_is_idempotent(session: Session, kiq_fake: ModuleType) -> None:
    """Run twice, the import creates its entities once and enqueues nothing more."""
    record = factories.import_(session, factories.user(session), CSV)

    ProcessImportJob().perform(record.id)
    pushed = len(kiq_fake.jobs())
    ProcessImportJob().perform(record.id)

    assert len(entity_ids(session, record)) == 3
    assert len(kiq_fake.jobs()) == pushed


def test_a_failed_import_is_marked_and_its_retry_reuses_created_rows(
    session: Session, kiq_fake: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure marks the import failed, tells the user and raises; the retry completes
    without duplicating the rows the first try made."""
    record = factories.import_(session, factories.user(session), CSV)
    real = imports.create_entity

    def fail_on_row_four(
        session: Session, record: Import, row: int, data: dict[str, str]
    ) -> Entity:
        if row == 4:
            raise OSError("disk full")
        return real(session, record, row, data)

    monkeypatch.setattr(imports, "create_entity", fail_on_row_four)
    with pytest.raises(OSError, match="disk full"):
        ProcessImportJob().perform(record.id)
    failed = reload(session, record)
    assert (failed.status, failed.error_message) == ("failed", "disk full")
    assert MailDeliveryJob.jobs[-1]["args"] == ["ImportMailer", "failed", record.id]
    first_try = entity_ids(session, record)

    monkeypatch.setattr(imports, "create_entity", real)
    ProcessImportJob().perform(record.id)

    assert reload(session, record).status == "completed"
    assert entity_ids(session, record)[: len(first_try)] == first_try
    assert len(entity_ids(session, record)) == 3


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
    """Uploaded for real, the import's cascade runs: entities located and scored, user mailed."""
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
