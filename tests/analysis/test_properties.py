"""Property-based tests (Hypothesis): for random input shapes, dtypes, output widths, families,
sample counts and bad values (NaN/Inf inputs, huge logits, empty batches, wrong label shapes, bad
options), ``fimvar.analyze`` and the ``fimvar`` command either refuse with one FimvarError (the
command: exit status 2, no traceback) or return finite results on which every bound holds."""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fimvar
from fimvar import FimvarError
from fimvar.app.cli import main

FAMILIES = ("categorical", "gaussian", "bernoulli", "poisson")
#: deterministic (the same examples on every run), no example database written into the tree
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def labels_for(family: str, n: int, width: int, shape: str, generator: torch.Generator):
    """Labels of a family for ``n`` inputs: ``right``, or a ``wrong`` shape, or ``0-d``."""
    if shape == "none":
        return None
    if shape == "0-d":
        return torch.tensor(0)
    rows = n if shape == "right" else n + 1
    if family == "categorical":
        y = torch.randint(0, width, (rows,), generator=generator)
        return y if shape == "right" else y[:, None].expand(rows, 2)
    columns = width if shape == "right" else width + 1
    if family == "gaussian":
        return torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    if family == "bernoulli":
        return torch.randint(0, 2, (rows, columns), generator=generator).double()
    return torch.randint(0, 6, (rows, columns), generator=generator).double()


def all_finite(result) -> bool:
    tensors = [getattr(result, q) for q in ("fisher", "i1", "i2", "v1", "v2", "c12", "input_var")]
    tensors += [result.variance(e) for e in ("i1", "i2", "combined", "exact")]
    tensors += [result.covariance(), result.alpha_star(), result.combined()]
    tensors += [b.values for b in result.bounds.values()]
    if result.empirical is not None:
        tensors += [result.empirical, result.empirical_bias]
    finite = all(torch.isfinite(t).all() for values in tensors for t in values.values())
    groups = [v for values in result.group_exact.values() for v in values.values()]
    groups += [v for b in result.group_bounds.values() for v in b.values.values()]
    return finite and all(math.isfinite(v) for v in groups)


def check_result(result) -> None:
    assert all_finite(result)
    failing = [n for n, b in result.bounds.items() if not b.holds()]
    failing += [n for n, b in result.group_bounds.items() if not b.holds()]
    assert not failing, failing


#: the bad value of an example (most examples have none, so that most reach a result)
FAULTS = ("none",) * 8 + ("nan input", "inf input", "large input", "empty batch", "integer inputs",
                          "wrong label shape", "0-d labels", "0 samples", "bool samples",
                          "float samples", "negative seed", "huge seed", "bad memory budget")


@settings(max_examples=40, **SETTINGS)
@given(
    inputs=st.integers(1, 5),
    features=st.integers(1, 4),
    width=st.integers(1, 8),
    family=st.sampled_from(FAMILIES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    samples=st.sampled_from([1, 2, 3, np.int64(2)]),
    logit=st.sampled_from([0.0, 0.0, 3.0, 30.0, -30.0, 1e3, -1e3, 1e6]),
    labels=st.sampled_from(["none", "right"]),
    option=st.sampled_from(["none", "none", "no-bounds", "autodiff", "memory=1kB", "batch=2",
                            "seed=2**64-1"]),
    fault=st.sampled_from(FAULTS),
    seed=st.integers(0, 2**16),
)
def test_analyze_refuses_or_returns_finite_results_whose_bounds_hold(
        inputs, features, width, family, dtype, samples, logit, labels, option, fault, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(features, 3), nn.Tanh(), nn.Linear(3, width)).to(dtype)
    with torch.no_grad():
        model[2].bias.add_(logit)
    n = 0 if fault == "empty batch" else inputs
    x = torch.randn(n, features, generator=generator, dtype=dtype)
    if fault.endswith(" input"):
        x[0, 0] = {"nan input": math.nan, "inf input": math.inf, "large input": 1e30}[fault]
    elif fault == "integer inputs":
        x = torch.randint(-3, 4, (n, features), generator=generator)
    shape = {"wrong label shape": "wrong", "0-d labels": "0-d"}.get(fault, labels)
    kwargs = {"samples": {"0 samples": 0, "bool samples": True, "float samples": 2.0}.get(fault, samples),
              "labels": labels_for(family, n, width, shape, generator)}
    if option == "no-bounds":
        kwargs["bounds"] = False
    elif option == "autodiff":
        kwargs["engine"] = "autodiff"
    elif option == "memory=1kB":
        kwargs["memory_budget"] = "1kB"
    elif option == "batch=2":
        kwargs["batch_size"] = 2
    elif option == "seed=2**64-1":
        kwargs["seed"] = 2**64 - 1
    if fault in ("negative seed", "huge seed"):  # the faults last: they override the options
        kwargs["seed"] = -1 if fault == "negative seed" else 2**64
    if fault == "bad memory budget":
        kwargs["memory_budget"] = "lots"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = fimvar.analyze(model, x, family, **kwargs)
        except FimvarError:
            return
    assert fault in ("none", "large input"), f"{fault} was accepted"
    check_result(result)


def _npz(folder: Path, inputs: int, features: int, dtype: str, fault: str, classes: int,
         generator: torch.Generator) -> str:
    if fault == "integer inputs":
        x = torch.randint(-3, 4, (inputs, features), generator=generator).numpy()
    else:
        x = torch.randn(inputs, features, generator=generator, dtype=getattr(torch, dtype)).numpy()
        if inputs and fault.endswith(" input"):
            x[0, 0] = {"nan input": np.nan, "inf input": np.inf, "large input": 1e30}[fault]
    y = torch.randint(0, classes, (inputs,), generator=generator).numpy()
    path = folder / "data.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


CLI_FAULTS = ("none",) * 8 + ("nan input", "inf input", "large input", "empty batch", "integer inputs",
                              "0 samples", "negative samples", "delta 0.5", "rho 1e-300", "seed 2**64")


@settings(max_examples=20, **SETTINGS)
@given(
    inputs=st.integers(1, 6),
    features=st.integers(1, 4),
    width=st.integers(1, 5),
    family=st.sampled_from(FAMILIES),
    data=st.sampled_from(["npz", "npz", "synthetic"]),
    dtype=st.sampled_from(["float32", "float64"]),
    samples=st.sampled_from(["1", "2", "3"]),
    labels=st.booleans(),
    option=st.sampled_from([[], [], ["--no-bounds"], ["--engine", "autodiff"], ["--batch-size", "2"],
                            ["--dtype", "float64"], ["--model-arg", "activation='relu'"]]),
    fault=st.sampled_from(CLI_FAULTS),
    seed=st.integers(0, 2**16),
)
def test_command_exits_2_with_one_error_or_writes_finite_results(
        inputs, features, width, family, data, dtype, samples, labels, option, fault, seed):
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        classes = max(width, 2)
        n = 0 if fault == "empty batch" else inputs
        spec = (_npz(folder, n, features, dtype, fault, classes, generator) if data == "npz" else
                f"synthetic:n={max(n, 1)},d={features},classes={classes}")
        samples = {"0 samples": "0", "negative samples": "-3"}.get(fault, samples)
        extra = {"delta 0.5": ["--delta", "0.5"], "rho 1e-300": ["--rho", "1e-300"],
                 "seed 2**64": ["--seed", str(2**64)]}.get(fault, [])
        out = folder / "out"
        argv = ["analyze", "--model", "fimvar.models:mlp", "--model-arg", f"sizes=[{features}, 3, {width}]",
                "--data", spec, "--family", family, "--samples", samples, "--out", str(out), "-q",
                "--no-figures", "--no-html", *(["--labels"] if labels else []), *option, *extra]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
        err = stderr.getvalue()
        assert "Traceback" not in err + stdout.getvalue()
        assert code in (0, 2), (code, err)
        if code == 2:
            errors = [line for line in err.splitlines() if not line.startswith("fimvar: ")
                      or line.startswith("fimvar: error:")]
            assert len(errors) == 1 and errors[0].startswith("fimvar: error:"), err
            return
        # the command converts integer inputs to the model's dtype; synthetic data has no faults
        assert fault in ("none", "large input", "integer inputs") or data == "synthetic", \
            f"{fault} was accepted"
        check_result(fimvar.load(out))


@pytest.mark.parametrize("width", [9, 10])
def test_widest_outputs_of_the_property_tests(width):
    """Output widths just beyond the property tests' range still give bounds that hold."""
    torch.manual_seed(width)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, width)).double()
    for family in FAMILIES:
        check_result(fimvar.analyze(model, torch.randn(4, 3, dtype=torch.float64), family, samples=2))
