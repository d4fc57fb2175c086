"""``python -m fimvar``: the same as the ``fimvar`` command."""

import sys

from fimvar.app.cli import main

sys.exit(main())
