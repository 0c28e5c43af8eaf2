"""CalculateMetricsJob (the brief's calculate_metrics_job_spec.rb)."""

from __future__ import annotations

import logging
from types import ModuleType

import pytest
from brief_app.jobs import CalculateAllMetricsJob, CalculateMetricsJob
from sqlalchemy.orm import Session

from tests.examples import factories


def test_calculates_the_average_score(session: Session) -> None:
    """Average of 5, 4, 5 is stored rounded to 4.7, with the count of 3."""
    entity = factories.entity(session)
    factories.submissions(session, entity, 5, 4, 5)

    CalculateMetricsJob().perform(entity.id)

    session.refresh(entity)
    assert entity.average_score == 4.7
    assert entity.submissions_count == 3


def test_is_idempotent(session: Session) -> None:
    """Running the job twice leaves the same score."""
    entity = factories.entity(session)
    factories.submissions(session, entity, 5, 4, 5)

    CalculateMetricsJob().perform(entity.id)
    CalculateMetricsJob().perform(entity.id)

    session.refresh(entity)
    assert (entity.average_score, entity.submissions_count) == (4.7, 3)


def test_deleted_entity_returns_quietly(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    """A job for an entity deleted since it was enqueued raises nothing and says why."""
    entity = factories.entity(session)
    session.delete(entity)
    session.commit()

    with caplog.at_level(logging.INFO):
        CalculateMetricsJob().perform(entity.id)

    assert f"entity #{entity.id} no longer exists" in caplog.text


def test_can_be_enqueued(kiq_fake: ModuleType) -> None:
    """perform_async(1) queues args [1] on the default queue with 5 retries."""
    CalculateMetricsJob.perform_async(1)

    job = CalculateMetricsJob.jobs[-1]
    assert job["args"] == [1]
    assert job["queue"] == "default"
    assert job["retry"] == 5


def test_all_metrics_fans_out_one_job_per_entity(session: Session, kiq_fake: ModuleType) -> None:
    """The hourly CalculateAllMetricsJob enqueues a CalculateMetricsJob per entity."""
    ids = [factories.entity(session).id for _ in range(3)]

    CalculateAllMetricsJob().perform()

    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[i] for i in ids]
