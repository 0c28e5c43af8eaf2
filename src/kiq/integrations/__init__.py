"""Framework integrations (issue 7 §5): Django, Starlette/FastAPI, Flask, SQLAlchemy.

One module per framework; each imports its framework when it is itself imported,
and says which extra to install if the framework is missing, so ``import kiq`` never
pulls a web framework in (``pip install 'kiq[integrations]'`` installs them all).

* ``kiq.integrations.django``: an app reading ``settings.KIQ``, ``manage.py kiq
  worker``, and enqueue-after-commit.
* ``kiq.integrations.starlette``: a lifespan that configures kiq and can mount the
  Web UI; async views enqueue with ``await MyJob.aperform_async(...)``.
* ``kiq.integrations.flask``: the ``Kiq(app)`` extension, reading ``KIQ_*`` config.
* ``kiq.integrations.sqlalchemy``: enqueue after a Session commits.

See docs/integrations.md.
"""
