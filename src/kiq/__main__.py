"""``python -m kiq``: kiq's command line under a name nothing else can shadow.

Why: Sidekiq 8.1.2+ installs an executable that is also called ``kiq`` (its terminal
UI). In an image with both a Ruby app and kiq, ``kiq`` on the PATH runs whichever
directory comes first; ``python -m kiq`` always runs this package's CLI, with the
interpreter (and virtualenv) it names. Same arguments as ``kiq``::

    python -m kiq worker -r app.jobs -q critical,2 -q default
"""

from __future__ import annotations

import sys

from kiq.cli import main

if __name__ == "__main__":
    sys.exit(main())
