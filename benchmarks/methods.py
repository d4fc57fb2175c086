"""Every method that the benchmark times: fimvar's engines and the peers.

A method is set up once per workload (outside the timing: copying and extending the model,
sampling labels) and returns a function that computes its quantity on the whole batch. Peers
are optional: a missing package gives a note instead of a row.

| method | computes |
|---|---|
| gradient | one plain gradient of the summed NLL with the data labels (the unit of every ratio) |
| fimvar structured: full analysis | exact Fisher, v1, v2, c12, input variance, Î1, Î2 (one draw) |
| fimvar structured: full + bounds | the same with every bound of [B] (spectral constants per input) |
| fimvar structured: exact Fisher | the exact diagonal Fisher alone |
| fimvar autodiff: full analysis | the full analysis with the torch.func engine |
| BackPACK DiagGGNExact | exact diagonal GGN (= exact Fisher for these families) |
| BackPACK DiagGGNMC | one-sample Monte-Carlo GGN diagonal |
| BackPACK DiagHessian | Hessian diagonal with labels sampled from the model (Î2, one draw) |
| BackPACK BatchDiagHessian | per-sample Hessian diagonals, sampled labels |
| NNGeometry FIM PMatDiag | exact diagonal Fisher |
| torch.func per-sample | per-sample Jacobians (vmap of jacrev), exact diagonal Fisher |
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from workloads import Workload

import fimvar


@dataclass
class Method:
    name: str
    quantity: str
    setup: Callable[[Workload], Callable[[], object]]
    peer: str = "fimvar"


def _loss(workload: Workload, reduction: str = "sum") -> nn.Module:
    if workload.family == "categorical":
        return nn.CrossEntropyLoss(reduction=reduction)
    return nn.MSELoss(reduction=reduction)


def sampled_labels(workload: Workload) -> torch.Tensor:
    """Labels drawn from the model (the estimators' labels, not the data's)."""
    generator = torch.Generator(device=workload.x.device).manual_seed(7)
    with torch.no_grad():
        out = workload.model(workload.x)
    if workload.family == "categorical":
        return torch.multinomial(torch.softmax(out, -1), 1, generator=generator)[:, 0]
    return out + torch.randn(out.shape, generator=generator, device=out.device)


# ---------------------------------------------------------------------------------- gradient
def gradient(workload: Workload):
    model, loss = workload.model, _loss(workload)

    def run():
        model.zero_grad(set_to_none=True)
        loss(model(workload.x), workload.labels).backward()

    return run


# ---------------------------------------------------------------------------------- fimvar
def fimvar_analysis(engine: str, bounds: bool, second_order: bool = True):
    def setup(workload: Workload):
        def run():
            return fimvar.analyze(workload.model, workload.x, workload.family, samples=1,
                                  engine=engine, bounds=bounds, second_order=second_order)

        return run

    return setup


def fimvar_fisher(workload: Workload):
    """The exact diagonal Fisher alone (:func:`fimvar.fisher_diagonal`): first derivatives of
    the structured engine and one contraction per parameter, chunk by chunk."""

    def run():
        return fimvar.fisher_diagonal(workload.model, workload.x, workload.family, engine="structured")

    return run


# ---------------------------------------------------------------------------------- BackPACK
def backpack_method(extension: str, sampled: bool):
    def setup(workload: Workload):
        from backpack import backpack, extend, extensions

        model = extend(copy.deepcopy(workload.model))
        loss = extend(_loss(workload))
        labels = sampled_labels(workload) if sampled else workload.labels
        make = getattr(extensions, extension)

        def run():
            model.zero_grad(set_to_none=True)
            with backpack(make()):
                loss(model(workload.x), labels).backward()
            return model

        return run

    return setup


# ---------------------------------------------------------------------------------- NNGeometry
def nngeometry_fim(workload: Workload):
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(workload.x, workload.labels), batch_size=workload.x.shape[0])
    variant = "classif_logits" if workload.family == "categorical" else "regression"

    def run():
        return FIM(workload.model, loader, PMatDiag, variant=variant,
                   device=str(workload.x.device))

    return run


# ---------------------------------------------------------------------------------- torch.func
def torch_func_fisher(workload: Workload):
    """Per-sample Jacobians by ``vmap(jacrev)`` in chunks that fit 1 GiB, then the exact Fisher
    ``Σ_x diag(Jᵀ I(h) J)`` (``I = diag(p) − ppᵀ`` categorical, identity Gaussian)."""
    model = workload.model
    params = {k: v.detach() for k, v in model.named_parameters()}
    count = sum(p.numel() for p in params.values())

    def single(p, x1):
        return functional_call(model, p, (x1[None],))[0]

    jacobian = vmap(jacrev(single), in_dims=(None, 0))
    chunk = max(1, (1 << 30) // (3 * 4 * workload.width * count))

    def run():
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for start in range(0, workload.x.shape[0], chunk):
            x = workload.x[start:start + chunk]
            with torch.no_grad():
                out = model(x)
            jac = jacobian(params, x)
            for name, j in jac.items():
                j = j.flatten(2)  # (n, T, numel)
                if workload.family == "categorical":
                    p = torch.softmax(out, -1)
                    mean = torch.einsum("nc,nck->nk", p, j)
                    value = torch.einsum("nc,nck->k", p, j**2) - (mean**2).sum(0)
                else:
                    value = (j**2).sum((0, 1))
                total[name] += value.reshape(total[name].shape)
        return total

    return run


METHODS: list[Method] = [
    Method("fimvar structured: full analysis", "I, v1, v2, c12, Var_x I, Î1, Î2",
           fimvar_analysis("structured", bounds=False)),
    Method("fimvar structured: full + bounds", "the same + every bound of [B]",
           fimvar_analysis("structured", bounds=True)),
    Method("fimvar structured: exact Fisher", "exact diagonal Fisher", fimvar_fisher),
    Method("fimvar structured: first-order analysis", "I, v1, Var_x I, Î1 (second_order=False)",
           fimvar_analysis("structured", bounds=False, second_order=False)),
    Method("fimvar autodiff: full analysis", "I, v1, v2, c12, Var_x I, Î1, Î2",
           fimvar_analysis("autodiff", bounds=False)),
    Method("BackPACK DiagGGNExact", "exact diagonal GGN = Fisher",
           backpack_method("DiagGGNExact", sampled=False), "backpack"),
    Method("BackPACK DiagGGNMC", "1-sample MC GGN diagonal", backpack_method("DiagGGNMC", False),
           "backpack"),
    Method("BackPACK DiagHessian", "Hessian diagonal, sampled labels (Î2)",
           backpack_method("DiagHessian", sampled=True), "backpack"),
    Method("BackPACK BatchDiagHessian", "per-sample Hessian diagonals, sampled labels",
           backpack_method("BatchDiagHessian", sampled=True), "backpack"),
    Method("NNGeometry FIM PMatDiag", "exact diagonal Fisher", nngeometry_fim, "nngeometry"),
    Method("torch.func per-sample", "per-sample Jacobians → exact Fisher", torch_func_fisher,
           "torch.func"),
]

#: the methods of the scaling tables
SCALING = ("fimvar structured: full analysis", "fimvar structured: exact Fisher",
           "BackPACK DiagGGNExact")


def available(peer: str) -> str | None:
    """``None`` when the peer's package imports, else a note."""
    module = {"backpack": "backpack", "nngeometry": "nngeometry"}.get(peer)
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as error:  # an optional peer: note why it is skipped
        return f"{peer} not available ({type(error).__name__}: {error})"
    return None


def format_bytes(count: int | None) -> str:
    if count is None:
        return "—"
    return f"{count / 2**20:,.0f} MiB" if count < 10 * 2**30 else f"{count / 2**30:.1f} GiB"


def ratio(seconds: float | None, unit: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    value = seconds / unit
    return f"{value:,.1f}×" if value < 100 else f"{value:,.0f}×"
