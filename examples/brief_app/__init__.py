"""The brief's example app in Python: a small ratings site and its background jobs.

The layout follows the brief's Rails app:

    models.py             the tables (SQLAlchemy 2.x; SQLite here)
    services/  queries/   business services and query objects the jobs call
    mailers/              mails, sent through SMTP (mailserver.py is a local one)
    jobs/                 the six job patterns, and the jobs they fan out to
    config/kiq.yml        the brief's config/sidekiq.yml (Sidekiq's format)
    config/kiq_schedule.yml  the brief's config/sidekiq_schedule.yml (sidekiq-cron's)

Run a worker from this directory (``config/kiq.yml`` requires ``.``, this package)::

    python -m brief_app.mailserver &      # from examples/: a local SMTP server on :1025
    cd examples/brief_app && kiq worker

``kiq demo`` runs all of it end to end; tests/examples/ holds the specs.
"""

from __future__ import annotations

from brief_app import jobs

__all__ = ["jobs"]
