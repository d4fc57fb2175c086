"""The laplace-torch backend: fimvar's diagonal Fisher against laplace-torch's own diagonal GGN
backends (BackPACK's ``DiagGGNExact``, Curvlinops), and the fitted posterior precision and
predictive, for classification and regression, in float64 and float32."""

from __future__ import annotations

import copy
import importlib.metadata
import sys

import pytest
import torch
from cases import make_case
from torch.utils.data import DataLoader, TensorDataset


def import_laplace():
    """laplace-torch, or skip. laplace-torch imports torchmetrics, which imports torchvision
    whenever its distribution is installed; a torchvision built for another torch (a CUDA wheel
    next to the CPU torch) fails on import with a RuntimeError. Then torchvision is hidden from
    both (nothing here needs it) instead of failing every test."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 — the broken torchvision raises RuntimeError or OSError, and
        # ImportError once another test has hidden it (None in sys.modules) while its
        # distribution, which torchmetrics checks, is still installed
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None
        imports = pytest.importorskip("lightning_utilities.core.imports")
        version = imports._version

        def hidden(name: str) -> str:
            if name == "torchvision":
                raise importlib.metadata.PackageNotFoundError(name)
            return version(name)

        imports._version = hidden
    return pytest.importorskip("laplace")


laplace = import_laplace()
from laplace.curvature import BackPackGGN, CurvlinopsGGN  # noqa: E402

from fimvar.recipes.laplace import FimvarGGN  # noqa: E402

PEERS = {"backpack": BackPackGGN, "curvlinops": CurvlinopsGGN}


def fitted(model, loader, likelihood, backend, prior_precision=0.7):
    la = laplace.DiagLaplace(copy.deepcopy(model), likelihood, backend=backend,
                             prior_precision=prior_precision)
    la.fit(loader)
    return la


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
@pytest.mark.parametrize("likelihood, family",
                         [("classification", "categorical"), ("regression", "gaussian")])
def test_diagonal_laplace_matches_laplace_torch_backends(dtype, tolerance, likelihood, family):
    case = make_case("mlp-tanh", family, inputs=40, seed=1, dtype=dtype)
    labels = case.labels if likelihood == "classification" else case.labels.to(dtype)
    loader = DataLoader(TensorDataset(case.x, labels), batch_size=16)  # batches of 16, 16, 8
    test_x = make_case("mlp-tanh", family, inputs=5, seed=7, dtype=dtype).x
    ours = fitted(case.model, loader, likelihood, FimvarGGN)
    assert ours.H.dtype == dtype and ours.H.shape == (sum(p.numel() for p in case.model.parameters()),)
    with torch.no_grad():  # the posterior moves the predictive away from the MAP's (not vacuous)
        plain = case.model(test_x)
        plain = plain.softmax(-1) if likelihood == "classification" else plain
        moved = ours(test_x, link_approx="probit") if likelihood == "classification" else ours(test_x)[0]
        spread = None if likelihood == "classification" else ours(test_x)[1]
    if likelihood == "classification":
        assert float((moved - plain).abs().max()) > 1e-3
    else:
        assert float(spread.diagonal(dim1=-2, dim2=-1).min()) > 1e-3   # predictive variances
    for name, peer in PEERS.items():
        theirs = fitted(case.model, loader, likelihood, peer)
        errors = {"H": relative(ours.H, theirs.H),
                  "loss": abs(float(ours.loss) - float(theirs.loss)) / abs(float(theirs.loss)),
                  "posterior precision": relative(ours.posterior_precision, theirs.posterior_precision)}
        if likelihood == "classification":
            errors["predictive"] = relative(ours(test_x, link_approx="probit"),
                                            theirs(test_x, link_approx="probit"))
        else:
            mean, variance = ours(test_x)
            their_mean, their_variance = theirs(test_x)
            errors["predictive"] = max(relative(mean, their_mean), relative(variance, their_variance))
        print(f"{likelihood} {dtype} vs {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        assert max(errors.values()) <= tolerance, (name, errors)


def test_the_backend_is_the_summed_exact_fisher():
    import fimvar

    case = make_case("mlp-tanh", "categorical", inputs=12)
    backend = FimvarGGN(case.model, "classification")
    loss, diagonal = backend.diag(case.x, case.labels)
    fisher = fimvar.fisher_diagonal(case.model, case.x, "categorical")
    flat = torch.cat([fisher[k].reshape(-1) for k, _ in case.model.named_parameters()])
    torch.testing.assert_close(diagonal, 12 * flat, rtol=1e-13, atol=0)   # a sum over the batch
    expected = torch.nn.functional.cross_entropy(case.model(case.x), case.labels, reduction="sum")
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-13, atol=0)
    with pytest.raises(fimvar.FimvarError, match="last_layer"):
        FimvarGGN(case.model, "classification", last_layer=True)
