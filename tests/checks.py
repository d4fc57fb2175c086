"""Shared test helpers: relative-error checks that also record the largest error seen (printed
at the end of every run by conftest.py)."""

from __future__ import annotations

import torch

#: largest relative error observed per compared quantity
LARGEST_ERRORS: dict[str, float] = {}


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """``max |a − e| / max(max |e|, floor)`` (0 when both are 0).

    ``floor`` is the scale of the whole quantity (e.g. 1e-6 × its largest value over all
    parameters), so that a tensor whose true value is rounding noise (``v2`` of a linear output
    layer by brute force is ~1e-35, exactly 0 in closed form) is judged on that scale.
    """
    actual = torch.as_tensor(actual, dtype=torch.float64).reshape(-1)
    expected = torch.as_tensor(expected, dtype=torch.float64).reshape(-1)
    scale = max(float(expected.abs().max()), floor)
    diff = float((actual - expected).abs().max())
    if scale == 0:
        return diff
    return diff / scale


def assert_close(actual, expected, label: str, rtol: float = 1e-10, floor: float = 0.0) -> None:
    error = relative_error(actual, expected, floor)
    LARGEST_ERRORS[label] = max(LARGEST_ERRORS.get(label, 0.0), error)
    assert error <= rtol, f"{label}: relative error {error:.3e} > {rtol:.0e}"
