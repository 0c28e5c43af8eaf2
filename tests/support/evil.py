"""A module with a side effect on import, for tests/test_security.py.

kiq must never import a module named by a payload's ``class``: a worker that did would
run this file, which writes the file named by ``KIQ_EVIL_MARKER``. It sits on the test
workers' PYTHONPATH on purpose, so only kiq's registry lookup stands in the way.
"""

from __future__ import annotations

import os
from pathlib import Path

if marker := os.environ.get("KIQ_EVIL_MARKER"):
    Path(marker).write_text("imported\n")


class Anything:
    """What ``"class": "evil.Anything"`` would name if kiq resolved classes by path."""

    def perform(self) -> None:
        Path(os.environ["KIQ_EVIL_MARKER"]).write_text("performed\n")
