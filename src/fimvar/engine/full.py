"""Per-input Jacobians and full parameter Hessians of every output, for the full-matrix mode.

For one input, with ``θ`` the flat vector of the analysed parameters (``named_parameters``
order), ``J = ∂h/∂θ`` (T × P) comes from reverse mode and ``H_a = ∇²_θ h^a`` (P × P, one per
output) from forward-over-reverse differentiation (``torch.func``): ``jacfwd`` of the *gradient*
of each output ``h·e_a``, batched over ``a``. (``jacfwd(jacrev(h))``, the textbook form, returns
wrong off-diagonal entries through ``LayerNorm`` with torch 2.13 — measured against double
backward and finite differences; the diagonal is right — so it is not used.) Both are exact;
their cost and memory (T·P² per input) restrict this engine to small models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

from fimvar.engine.functional import differentiable


class FullDerivatives:
    """Exact ``h``, ``J`` and ``H_a`` of a model for the parameters ``parameter_names``."""

    name = "autodiff"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        self.model = model
        self.parameter_names = parameter_names
        self.memory_budget = memory_budget
        named = dict(model.named_parameters())
        self.shapes = {n: named[n].shape for n in parameter_names}
        self.slices: dict[str, slice] = {}
        offset = 0
        for name in parameter_names:
            self.slices[name] = slice(offset, offset + named[name].numel())
            offset += named[name].numel()
        self.size = offset
        self.frozen = {k: v.detach() for k, v in named.items() if k not in parameter_names}
        self.frozen.update({k: v.detach() for k, v in model.named_buffers()})
        self.flat = torch.cat([named[n].detach().reshape(-1) for n in parameter_names])

    def _outputs(self, theta: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        params = {n: theta[self.slices[n]].reshape(self.shapes[n]) for n in self.parameter_names}
        return functional_call(self.model, (params, self.frozen), (x1.unsqueeze(0),)).reshape(-1)

    def chunk_size(self, width: int) -> int:
        """Inputs per chunk: ``J`` and the T Hessians in float64 with a safety factor of 4."""
        per_input = 4 * 8 * width * (self.size**2 + self.size)
        return max(1, self.memory_budget // per_input)

    def _output_hessians(self, x1: torch.Tensor, width: int) -> torch.Tensor:
        """``∇²_θ h^a`` of every output, ``(T, P, P)`` (module docs for the form)."""
        basis = torch.eye(width, dtype=self.flat.dtype, device=self.flat.device)

        def one_output(direction):
            return jacfwd(grad(lambda theta: self._outputs(theta, x1) @ direction))(self.flat)

        return vmap(one_output)(basis)

    def derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h, J, H)`` of the chunk: ``(n, T)``, ``(n, T, P)``, ``(n, T, P, P)``, float64."""
        outputs, jacobians, hessians = [], [], []
        with differentiable(self.model):
            for x1 in x:
                outputs.append(self._outputs(self.flat, x1).detach())
                jacobians.append(jacrev(self._outputs)(self.flat, x1))
                hessians.append(self._output_hessians(x1, outputs[-1].numel()))
        return tuple(torch.stack(t).to(torch.float64) for t in (outputs, jacobians, hessians))
