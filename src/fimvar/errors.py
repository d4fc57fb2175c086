"""The one exception type fimvar raises for bad input, and its warnings."""

from __future__ import annotations

import os
import sys
import warnings

#: the folder of the fimvar package: frames inside it are not the user's
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class FimvarError(ValueError):
    """Bad input to fimvar. The message says what to change."""


def user_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that names the first caller outside fimvar
    (the user's line), counted from the function that calls this one's caller."""
    level = 1
    frame = sys._getframe(2)  # the caller of warn()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` pointing at the user's line (the first frame outside fimvar), so that
    the warning names the call that caused it and Python's once-per-location filter applies there."""
    warnings.warn(message, category, stacklevel=user_stacklevel() + 1)
