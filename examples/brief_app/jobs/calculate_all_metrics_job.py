"""CalculateAllMetricsJob: the hourly sweep (schedule: calculate_all_metrics).

It does no scoring itself: it fans out one CalculateMetricsJob per entity with
``perform_bulk``, which pushes 1,000 jobs per round trip (the brief: never enqueue
massively without batching), so the work spreads over every worker thread.
"""

from __future__ import annotations

import kiq
from brief_app import db
from brief_app.jobs.calculate_metrics_job import CalculateMetricsJob
from brief_app.queries import entity_metrics


class CalculateAllMetricsJob(kiq.Job, name="CalculateAllMetricsJob", queue="default", retry=1):
    def perform(self) -> None:
        with db.session() as session:
            ids = entity_metrics.all_entity_ids(session)
        CalculateMetricsJob.perform_bulk([[entity_id] for entity_id in ids])
        self.logger.info("enqueued metrics for %d entities", len(ids))
