"""``python -m fimvar``: the same as the ``fimvar`` command."""

import sys

from fimvar.cli import main

sys.exit(main())
