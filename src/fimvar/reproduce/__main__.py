"""``python -m fimvar.reproduce NAME [--quick] [--out DIR] [--seeds K]``."""

import sys

from fimvar.reproduce import main

sys.exit(main())
