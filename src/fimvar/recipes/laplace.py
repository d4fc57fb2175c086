"""A laplace-torch curvature backend whose diagonal comes from fimvar's exact Fisher.

``laplace.DiagLaplace(model, "classification", backend=FimvarGGN)`` then fits its posterior
precision ``P = H / (σ² T) + prior precision`` with ``H = Σ_{n in batch} I(θ|x_n)``, the exact
diagonal Fisher ``Jᵀ I(h) J`` summed over the batch (docs/theory.md §2). For the likelihoods
laplace-torch offers (softmax cross-entropy, unit-variance Gaussian) the link is canonical and the
Fisher equals the generalised Gauss–Newton matrix, which is what its ``BackPackGGN`` and
``CurvlinopsGGN`` backends compute; labels come from the model, not from the data.

laplace-torch is imported only when :data:`FimvarGGN` is first used (``pip install
laplace-torch``); ``import fimvar`` does not need it.
"""

from __future__ import annotations

from typing import Any

#: laplace-torch's likelihood → fimvar's family (regression: ``MSELoss(sum) / 2`` = Gaussian, σ = 1)
FAMILIES = {"classification": "categorical", "regression": "gaussian"}


def _backend_class() -> type:
    try:
        from laplace.curvature import CurvatureInterface
    except ImportError as error:
        from fimvar.errors import FimvarError

        raise FimvarError("fimvar.recipes.laplace needs laplace-torch: pip install laplace-torch") from error
    import torch

    from fimvar.analysis.fisher import fisher_diagonal
    from fimvar.errors import FimvarError

    class FimvarGGN(CurvatureInterface):
        """laplace-torch curvature backend: ``diag(x, y)`` returns the batch's loss and the exact
        diagonal Fisher summed over the batch, ``Σ_n I(θ|x_n)`` (docs/theory.md §2), computed by
        :func:`fimvar.fisher_diagonal`, flattened in the order of the model's trainable
        parameters. Pass fimvar options through ``backend_kwargs={"engine": ...,
        "memory_budget": ...}``. Only ``diag`` (``DiagLaplace``) is provided; the Jacobians of
        the predictive come from laplace-torch's own ``CurvatureInterface``."""

        def __init__(self, model: torch.nn.Module, likelihood: str, last_layer: bool = False,
                     subnetwork_indices: torch.LongTensor | None = None, *, engine: str = "auto",
                     memory_budget: int | str | None = None, **kwargs: Any) -> None:
            if last_layer:
                raise FimvarError("the fimvar backend computes the Fisher of every parameter: use "
                                  "subset_of_weights='all' (or 'subnetwork'), not 'last_layer'")
            if likelihood not in FAMILIES:
                raise FimvarError(f"the fimvar backend supports the likelihoods {sorted(FAMILIES)}, "
                                  f"got {likelihood!r}")
            super().__init__(model, likelihood, last_layer, subnetwork_indices, **kwargs)
            self.engine, self.memory_budget = engine, memory_budget

        def diag(self, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not isinstance(x, torch.Tensor):
                raise FimvarError("the fimvar backend takes tensor inputs; dict inputs go through "
                                  "fimvar.fisher_diagonal directly")
            names = list(self.params_dict)
            with torch.no_grad():
                f = self.model(x)
                if self.likelihood == "classification":
                    f, y = f.view(-1, f.size(-1)), y.view(-1)
                loss = self.factor * self.lossfunc(f, y)
            fisher = fisher_diagonal(self.model, x, FAMILIES[self.likelihood], self.engine,
                                     parameters=names, memory_budget=self.memory_budget)
            # fimvar averages over the inputs; laplace-torch sums over the batch
            dtype = self.params[0].dtype
            flat = torch.cat([fisher[name].reshape(-1) for name in names]) * x.shape[0]
            flat = flat.to(device=self.params[0].device, dtype=dtype)
            if self.subnetwork_indices is not None:
                flat = flat[self.subnetwork_indices]
            return loss.detach(), flat

    return FimvarGGN


def __getattr__(name: str) -> Any:
    if name == "FimvarGGN":
        cls = _backend_class()
        globals()["FimvarGGN"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
