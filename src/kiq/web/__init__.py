"""kiq's Web UI: Sidekiq's dashboard as an ASGI app, built on ``kiq.api`` only.

Why an ASGI app and not a server of its own: it mounts inside the application a team
already runs (Starlette, FastAPI, Django through ASGI) at any prefix, behind that
application's own login, or runs alone with ``kiq web``. It needs the ``web`` extra
(``pip install 'kiq[web]'``: Starlette, Jinja2, uvicorn, python-multipart).

Example::

    from kiq.web import create_app

    app = create_app()                                   # standalone ASGI app

    # inside a Starlette/FastAPI app, behind your own check
    fastapi_app.mount("/kiq", create_app(auth=lambda request: is_admin(request)))

Safety: every state-changing request is a POST refused unless it comes from the same
origin (``Sec-Fetch-Site``/``Origin``, as Sidekiq 8.1) or carries the CSRF token from
a signed cookie; output is escaped; nothing is loaded from another site.
"""

from __future__ import annotations

from importlib.util import find_spec

# python-multipart (Starlette's form parser) is importable as python_multipart since
# 0.0.13 and as multipart before; the old name now warns, so look it up, not import it.
_missing = [
    name
    for name, modules in (
        ("starlette", ["starlette"]),
        ("jinja2", ["jinja2"]),
        ("python-multipart", ["python_multipart", "multipart"]),
    )
    if not any(find_spec(module) for module in modules)
]
if _missing:  # pragma: no cover - exercised by hand without the extra
    raise ImportError(
        f"kiq.web needs the 'web' extra ({', '.join(_missing)} missing): pip install 'kiq[web]'"
    )

from kiq.web.app import create_app  # noqa: E402  # after the friendly check
from kiq.web.security import BasicAuth, basic_auth  # noqa: E402

__all__ = ["BasicAuth", "basic_auth", "create_app"]
