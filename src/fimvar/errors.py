"""The one exception type fimvar raises for bad input."""


class FimvarError(ValueError):
    """Bad input to fimvar. The message says what to change."""
