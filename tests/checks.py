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


def assert_same_document(actual, expected, path: str = "", rtol: float = 1e-13) -> None:
    """Two JSON documents with the same structure and strings, and numbers equal to ``rtol``
    (a reloaded result recomputes its sums in another memory layout: a BLAS may round the last
    bit differently)."""
    assert type(actual) is type(expected) or {type(actual), type(expected)} <= {int, float}, path
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key, value in expected.items():
            assert_same_document(actual[key], value, f"{path}/{key}", rtol)
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {len(actual)} != {len(expected)} items"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_document(a, e, f"{path}[{index}]", rtol)
    elif isinstance(expected, float):
        assert actual == expected or abs(actual - expected) <= rtol * abs(expected), \
            f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """A dict of per-parameter tensors as one flat vector (in the dict's order)."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def check_moments(values: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, label: str) -> float:
    """Sample mean and variance of Monte Carlo replicates ``values`` (R, P) against predicted ones,
    each within 5 standard errors: of the mean from the predicted variance, of the sample variance
    from the sample fourth central moment. Returns the largest |z|."""
    repeats = values.shape[0]
    scale = float(mean.abs().max())
    centred = values - values.mean(0)
    sample_variance = centred.pow(2).sum(0) / (repeats - 1)
    fourth = centred.pow(4).mean(0)
    se_mean = (variance / repeats).sqrt() + 1e-12 * scale
    se_variance = ((fourth - sample_variance**2).clamp_min(0) / repeats).sqrt() + 1e-12 * scale**2
    z_mean = float(((values.mean(0) - mean).abs() / se_mean).max())
    z_variance = float(((sample_variance - variance).abs() / se_variance).max())
    print(f"{label}: max |z| mean {z_mean:.2f}, variance {z_variance:.2f}")
    assert z_mean <= 5, f"{label}: mean off by {z_mean:.1f} standard errors"
    assert z_variance <= 5, f"{label}: variance off by {z_variance:.1f} standard errors"
    return max(z_mean, z_variance)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``fimvar`` run in this process on ``argv``: its exit code, stdout and stderr."""
    from fimvar.app.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
