"""CalculateMetricsJob: recompute an entity's average score (the brief's pattern 1).

Idempotent by nature: it recomputes from the submissions, so running it twice, or
out of order with other jobs, gives the same result. A deleted entity is not an
error: the job returns quietly, as the brief's ``return unless entity``.
"""

from __future__ import annotations

import kiq
from brief_app import db
from brief_app.models import Entity
from brief_app.queries import entity_metrics


class CalculateMetricsJob(kiq.Job, name="CalculateMetricsJob", queue="default", retry=5):
    def perform(self, entity_id: int) -> None:
        with db.session() as session, session.begin():
            entity = session.get(Entity, entity_id)
            if entity is None:
                self.logger.info("entity #%d no longer exists; nothing to do", entity_id)
                return
            self.logger.info("calculating metrics for entity #%d", entity_id)
            average, count = entity_metrics.for_entity(session, entity_id)
            entity.average_score = average
            entity.submissions_count = count
        self.logger.info("metrics updated: %.1f (%d submissions)", average, count)
