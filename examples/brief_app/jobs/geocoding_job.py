"""GeocodingJob: coordinates for an entity's address (enqueued by ProcessImportJob).

Idempotent: an entity already located is left alone; a deleted one is skipped.
"""

from __future__ import annotations

import kiq
from brief_app import db
from brief_app.models import Entity
from brief_app.services import geocoder


class GeocodingJob(kiq.Job, name="GeocodingJob", queue="default", retry=5):
    def perform(self, entity_id: int) -> None:
        with db.session() as session, session.begin():
            entity = session.get(Entity, entity_id)
            if entity is None:
                self.logger.info("entity #%d no longer exists", entity_id)
                return
            if entity.latitude is not None:
                return  # done by an earlier run
            entity.latitude, entity.longitude = geocoder.locate(entity.address)
