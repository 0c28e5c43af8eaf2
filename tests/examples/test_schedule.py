"""The app's config/kiq.yml and config/kiq_schedule.yml: the brief's files, loaded by kiq."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from brief_app import settings
from brief_app.jobs import CalculateMetricsJob
from brief_app.models import Entity
from sqlalchemy.orm import Session

from kiq import cron
from kiq.config import Config
from kiq.job import lookup
from kiq.outage import Outage
from kiq.recurring import CronPoller, CronSet
from tests.examples import factories
from tests.examples.conftest import APP_DIR
from tests.support.wait import wait_until

SCHEDULE = APP_DIR / "config" / "kiq_schedule.yml"
BRIEF = {
    "send_daily_digest": ("SendDailyDigestJob", "0 8 * * *", "mailers"),
    "send_weekly_digest": ("SendWeeklyDigestJob", "0 9 * * 1", "mailers"),
    "cleanup_old_data": ("CleanupOldDataJob", "0 2 * * *", "maintenance"),
    "calculate_all_metrics": ("CalculateAllMetricsJob", "0 * * * *", "default"),
    "process_pending_notifications": (
        "ProcessPendingNotificationsJob",
        "*/15 * * * *",
        "notifications",
    ),
}


def test_schedule_file_is_the_briefs() -> None:
    """kiq.cron.load reads the five recurring jobs with the brief's classes, lines and queues."""
    jobs = {job.name: (job.klass, job.line, job.queue) for job in cron.load(SCHEDULE)}

    assert jobs == BRIEF


def test_every_scheduled_class_is_an_app_job_on_that_queue() -> None:
    """Each scheduled class is a registered kiq Job whose own queue is the one scheduled."""
    for job in cron.load(SCHEDULE):
        job_class = lookup(job.klass)
        assert job_class is not None, job.klass
        assert job_class.options["queue"] == job.queue


def test_config_file_is_the_briefs_sidekiq_yml() -> None:
    """config/kiq.yml gives 10 threads and the brief's six weighted queues."""
    config = Config.load(APP_DIR / "config" / "kiq.yml", env={})

    assert config.concurrency == 10
    assert config.queues == [
        ("mailers", 5),
        ("notifications", 5),
        ("default", 3),
        ("imports", 2),
        ("exports", 2),
        ("maintenance", 1),
    ]


def test_a_worker_stores_the_schedule_in_redis(config: Config) -> None:
    """Loaded by a worker's CronPoller, the schedule lists five enabled recurring jobs."""
    config.schedule_file = str(SCHEDULE)

    assert CronPoller(config, Outage(config.store.safe_url)).load() == 5

    entries = {entry.name: entry for entry in CronSet(config)}
    assert set(entries) == set(BRIEF)
    assert all(entry.enabled for entry in entries.values())


def test_kiq_worker_runs_the_app_from_its_directory(
    session: Session, redis_url: str, r: redis.Redis, tmp_path: Path, config: Config
) -> None:
    """`kiq worker` started in examples/brief_app finds config/kiq.yml (which requires the
    app) and the schedule, and runs the app's jobs."""

    entity = factories.entity(session)
    factories.submissions(session, entity, 3, 4)
    env = {
        **os.environ,
        "KIQ_REDIS_URL": redis_url,
        "BRIEF_APP_DATABASE_URL": settings.current().database_url,
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "kiq.cli", "worker"], cwd=APP_DIR, env=env, stdout=log, stderr=log
    )
    try:
        wait_until(lambda: len(CronSet(config)) == 5, timeout=20)
        CalculateMetricsJob.perform_async(entity.id)

        def scored() -> bool:
            session.expire_all()
            return session.get_one(Entity, entity.id).average_score == 3.5

        wait_until(scored, timeout=20)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
        log.close()
