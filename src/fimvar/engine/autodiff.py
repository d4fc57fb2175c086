"""Exact per-sample derivatives of any ``nn.Module`` with ``torch.func``.

``u_i`` (all T Jacobian columns) come from ``vmap(jacrev)``; the diagonal second derivatives
``w_i = ∂²h/∂θ_i²`` of every output come from forward-over-reverse differentiation along each
one-hot direction ``e_i``: ``w_i = d/dt [∂h(θ + t e_i)/∂t]`` with the inner derivative by
reverse mode. (Forward-over-forward would be cheaper but is wrong through ``LayerNorm`` in
current PyTorch.) Cost: T reverse passes per parameter entry and input, so this engine is for
small models, and it is the ground truth every faster engine is tested against.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.functional import differentiable, module_output_sizes, output_tensor


class AutodiffEngine(Engine):
    """``torch.func`` back end; works for any module whose forward is a pure function of its
    parameters, buffers and one batched input."""

    name = "autodiff"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        super().__init__(model, parameter_names, memory_budget)
        self._activation_elements: int | None = None
        #: set when the forward cannot be vmapped over the inputs (data-dependent control flow)
        self._input_by_input = False

    # -- functional form of the model on one input
    def _single_output(self, params: dict, buffers: dict, x1: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (params, buffers), (x1.unsqueeze(0),))
        return output_tensor(out).reshape(-1)

    def _split_parameters(self):
        named = dict(self.model.named_parameters())
        selected = {k: named[k].detach() for k in self.parameter_names}
        frozen = {k: v.detach() for k, v in named.items() if k not in selected}
        buffers = {k: v.detach() for k, v in self.model.named_buffers()}
        buffers.update(frozen)
        return selected, buffers

    def _measure_activations(self, x: torch.Tensor) -> int:
        """Number of activation elements one input produces (all module outputs)."""
        if self._activation_elements is None:
            sizes = module_output_sizes(self.model, x, self.model.modules())
            self._activation_elements = max(sum(sizes.values()), 1)
        return self._activation_elements

    def chunk_size(self, x: torch.Tensor, width: int, draws: int, column_bytes: int = 0,
                   input_bytes: int = 0) -> int:
        params = sum(p.numel() for n, p in self.model.named_parameters() if n in self.parameter_names)
        activations = self._measure_activations(x)
        # per input: U and W in float64 (2·T·P), the draws' scores (M·P), jacrev's T copies of
        # the activations, all with a safety factor for temporaries; and room for the second
        # derivatives along at least one direction of the largest parameter
        largest = max(p.numel() for n, p in self.model.named_parameters() if n in self.parameter_names)
        itemsize = next(self.model.parameters()).element_size()
        per_input = (8 * 6 * (2 * width * params + max(draws, 1) * params + width * activations)
                     + self._direction_bytes(width, activations, largest, itemsize)
                     + column_bytes * params + input_bytes)
        return max(1, min(4096, self.memory_budget // per_input))

    @staticmethod
    def _direction_bytes(width: int, activations: int, numel: int, itemsize: int) -> int:
        """Memory of one input along one direction in :meth:`_second_derivatives`: jacrev's T
        copies of the activations and the batched copies of the shifted parameter (its value,
        tangent, gradient and their temporaries: about 5 parameter-sized tensors measured with
        torch 2.13), with a safety factor of 3."""
        return 16 * (max(width, 1) * activations + numel) * itemsize

    def derivatives(self, x: torch.Tensor, second: bool = True
                    ) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        params, buffers = self._split_parameters()

        def single(p, x1):
            return self._single_output(p, buffers, x1)

        with torch.no_grad():
            outputs = output_tensor(self.model(x))
        outputs = outputs.reshape(outputs.shape[0], -1)
        width = outputs.shape[1]
        with differentiable(self.model):
            jacobians = self._over_inputs(jacrev(single), params, x, stack=True)
            blocks = []
            for name, value in params.items():
                numel = value.numel()
                first = jacobians[name].reshape(x.shape[0], width, numel).to(torch.float64)
                if second:
                    w = self._second_derivatives(single, params, name, x, width)
                else:  # a broadcast zero costs no memory
                    w = torch.zeros((), dtype=first.dtype, device=first.device).expand(first.shape)
                blocks.append(ParameterDerivatives(name, value.shape, first, w))
        return outputs.to(torch.float64), blocks

    def _second_derivatives(self, single, params, name, x, width) -> torch.Tensor:
        """``w`` of every entry of parameter ``name``: ``(n, T, numel)``."""
        value = params[name]
        numel = value.numel()
        dtype = value.dtype
        zero = torch.zeros((), dtype=dtype, device=value.device)
        one = torch.ones((), dtype=dtype, device=value.device)

        def along(x1, direction):
            def path(t):
                shifted = dict(params)
                shifted[name] = params[name] + t * direction
                return single(shifted, x1)

            return jvp(jacrev(path), (zero,), (one,))[1]

        along_directions = vmap(along, in_dims=(None, 0))
        activations = self._measure_activations(x)
        per_direction = x.shape[0] * self._direction_bytes(width, activations, numel, value.element_size())
        step = max(1, min(numel, self.memory_budget // per_direction))
        # filled piece by piece: a piece can be a view that keeps vmap's much larger
        # intermediate storage alive (1 MB per call measured with torch 2.13)
        second = torch.empty(x.shape[0], width, numel, dtype=torch.float64, device=value.device)
        for start in range(0, numel, step):
            stop = min(numel, start + step)
            directions = torch.zeros(stop - start, numel, dtype=dtype, device=value.device)
            directions[torch.arange(stop - start), torch.arange(start, stop)] = 1
            directions = directions.reshape(stop - start, *value.shape)
            values = self._over_inputs(lambda d, x1: along_directions(x1, d), directions, x)  # (n, d, T)
            second[:, :, start:stop] = values.transpose(1, 2)
        return second

    def _over_inputs(self, function, shared, x: torch.Tensor, stack: bool = False):
        """``function(shared, x_i)`` for every input, batched by ``vmap``; for a forward with
        data-dependent control flow (e.g. ``transformers``' ``if mask.all()``), which ``vmap`` over
        the inputs cannot run, input by input (the inner ``vmap`` over cotangents or directions
        does not batch the data, so the branch is taken on real values). Results are stacked
        along a new first dimension (dicts of them with ``stack``)."""
        if not self._input_by_input:
            try:
                return vmap(function, in_dims=(None, 0))(shared, x)
            except RuntimeError as error:
                if "data-dependent control flow" not in str(error) and ".item()" not in str(error):
                    raise
                self._input_by_input = True
        values = [function(shared, x1) for x1 in x]
        if stack and isinstance(values[0], dict):
            return {key: torch.stack([v[key] for v in values]) for key in values[0]}
        return torch.stack(values)
