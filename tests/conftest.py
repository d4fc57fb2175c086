"""Test configuration: the catalogue and helper modules of this folder are importable from every
test (``cases``, ``oracle``, ``checks``), and the largest oracle errors are printed at the end."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from checks import LARGEST_ERRORS  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if LARGEST_ERRORS:
        terminalreporter.write_sep("-", "largest relative error per oracle comparison")
        for label, error in sorted(LARGEST_ERRORS.items()):
            terminalreporter.write_line(f"{label:<40} {error:.2e}")
