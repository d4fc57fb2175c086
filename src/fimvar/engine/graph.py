"""First derivatives of any module graph from hooks around its layers (docs/theory.md §14).

One forward pass of the whole chunk records, at every supported layer, its input ``a`` and its
output ``z``; then one backward pass per output column ``t`` (autograd through whatever the model
does between the layers: residual additions, attention, normalisation, custom code) gives
``δ_t = ∂h_t/∂z`` for every input at once — per input, because the inputs of a chunk do not
interact (fimvar analyses in eval mode). A layer's parameter derivatives follow from ``δ`` and
``a`` in closed form:

- ``Linear``: ``∂h_t/∂W = Σ_p δ_{t,p} a_pᵀ`` over the positions p of a sequence input (a factored
  ``δ ⊗ a`` when there is one position), ``∂h_t/∂b = Σ_p δ_{t,p}``;
- ``Conv1d``/``Conv2d`` (``groups = 1``): the same with the unfolded input patches;
- ``Embedding``: ``δ`` scattered into the rows of the looked-up tokens;
- ``LayerNorm``, ``BatchNorm`` (eval), ``GroupNorm``: ``∂h_t/∂γ = Σ δ_t ⊙ â``, ``∂h_t/∂β = Σ δ_t``
  with ``â`` the normalised input.

A parameter used by several layers (tied weights) gets the sum of its uses. Parameters outside
these layers (e.g. a ``MultiheadAttention``'s projections, a bare ``nn.Parameter``) are
differentiated by the autodiff engine, restricted to them. The cost is one forward and T
backward passes of the chunk, like BackPACK's exact GGN diagonal, plus the per-input products.
This engine computes first derivatives only (the exact Fisher, ``fisher_diagonal``); second
derivatives are the autodiff engine's.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fimvar.engine.autodiff import AutodiffEngine
from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.functional import buffers_kept, module_output_sizes, output_tensor
from fimvar.errors import FimvarError

NORMALISATIONS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _supported(module: nn.Module) -> bool:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    if isinstance(module, nn.LayerNorm):
        return module.elementwise_affine
    if isinstance(module, nn.modules.batchnorm._BatchNorm):  # eval mode: running statistics
        return module.affine and module.track_running_stats
    if isinstance(module, nn.GroupNorm):
        return module.affine
    return isinstance(module, (nn.Linear, nn.Embedding))


class GraphEngine(Engine):
    """Hook-based first derivatives for any module graph (see the module docs)."""

    name = "graph"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        super().__init__(model, parameter_names, memory_budget)
        self.names = {id(p): name for name, p in model.named_parameters() if name in parameter_names}
        self.layers: dict[str, nn.Module] = {
            name: module for name, module in model.named_modules()
            if _supported(module) and any(id(p) in self.names for p in module.parameters(recurse=False))}
        self.fallback: AutodiffEngine | None = None
        self._discovered = False

    def _discover(self, x: torch.Tensor) -> None:
        """One probing forward: keep the layers the forward really calls as modules
        (``nn.MultiheadAttention`` uses its ``out_proj`` weight functionally, for one), count the
        elements they output (for the chunk size); every other parameter goes to the autodiff
        engine."""
        if self._discovered:
            return
        sizes = module_output_sizes(self.model, x, self.layers.values())
        self._activation_elements = max(sum(sizes.values()), 1)
        self.layers = {name: m for name, m in self.layers.items() if m in sizes}
        covered = {self.names[id(p)] for m in self.layers.values() for p in m.parameters(recurse=False)
                   if id(p) in self.names}
        others = [name for name in self.parameter_names if name not in covered]
        self.fallback = AutodiffEngine(self.model, others, self.memory_budget) if others else None
        self._discovered = True

    def chunk_size(self, x: torch.Tensor, width: int, draws: int, column_bytes: int = 0,
                   input_bytes: int = 0) -> int:
        self._discover(x)
        params = sum(p.numel() for n, p in self.model.named_parameters() if n in self.parameter_names)
        activations = self._activation_elements
        # per input: the derivatives (T·P, float64, with room for the per-layer products), the
        # recorded layer inputs/outputs and one output column's gradients
        itemsize = next(self.model.parameters()).element_size()
        per_input = (itemsize * 3 * width * params + 8 * 4 * activations + column_bytes * params
                     + input_bytes)
        size = max(1, min(4096, self.memory_budget // max(per_input, 1)))
        if self.fallback is not None:
            size = min(size, self.fallback.chunk_size(x, width, draws))
        return size

    def derivatives(self, x: torch.Tensor, second: bool = True
                    ) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        if second:
            raise FimvarError("the graph engine computes first derivatives only; use engine='autodiff' "
                              "or 'auto' for the second-order quantities")
        self._discover(x)
        records: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

        def record(name):
            def hook(module, inputs, output):
                records.append((name, module, inputs[0].detach().clone(), output))
                return output.clone()  # later in-place operations must not touch the recorded z
            return hook

        with contextlib.ExitStack() as stack, torch.enable_grad():
            stack.enter_context(buffers_kept(self.model))
            hooks = [m.register_forward_hook(record(name)) for name, m in self.layers.items()]
            for hook in hooks:
                stack.callback(hook.remove)
            outputs = output_tensor(self.model(x))
            outputs = outputs.reshape(outputs.shape[0], -1)
            width = outputs.shape[1]
            gradients = [[] for _ in records]
            for t in range(width):
                cotangent = torch.zeros_like(outputs)
                cotangent[:, t] = 1
                found = torch.autograd.grad(outputs, [z for _, _, _, z in records], cotangent,
                                            retain_graph=t < width - 1, allow_unused=True)
                for store, (_, _, _, z), g in zip(gradients, records, found, strict=True):
                    store.append(torch.zeros_like(z) if g is None else g)
        n = x.shape[0]
        parts: dict[str, list[ParameterDerivatives]] = {}
        for (_, module, a, _), store in zip(records, gradients, strict=True):
            delta = torch.stack(store, 1)  # (n, T, *z), in the model's dtype like its derivatives
            for part in self._layer_derivatives(module, a, delta):
                parts.setdefault(part.name, []).append(part)
        blocks = [self._combine(parts[name], n, width) for name in self.parameter_names if name in parts]
        if self.fallback is not None:
            _, more = self.fallback.derivatives(x, second=False)
            blocks += more
        order = {name: i for i, name in enumerate(self.parameter_names)}
        blocks.sort(key=lambda b: order[b.name])
        return outputs.detach().to(torch.float64), blocks

    # ------------------------------------------------------------------ per layer
    def _block(self, parameter: torch.Tensor, first: torch.Tensor, inputs=None) -> ParameterDerivatives:
        zero = torch.zeros((), dtype=first.dtype, device=first.device).expand(first.shape)
        return ParameterDerivatives(self.names[id(parameter)], parameter.shape, first, zero, inputs)

    def _layer_derivatives(self, module: nn.Module, a: torch.Tensor, delta: torch.Tensor):
        n, width = delta.shape[:2]
        selected = [p for p in module.parameters(recurse=False) if id(p) in self.names]

        def wanted(p):
            return p is not None and any(p is q for q in selected)

        a = a.to(delta.dtype) if a.is_floating_point() else a
        if isinstance(module, nn.Linear):
            if a.dim() == 2 and wanted(module.weight):  # one position: factored δ ⊗ a
                yield self._block(module.weight, delta, a)
            elif wanted(module.weight):
                d, x = delta.reshape(n, width, -1, delta.shape[-1]), a.reshape(n, -1, a.shape[-1])
                yield self._block(module.weight, torch.einsum("ntpo,npi->ntoi", d, x).reshape(n, width, -1))
            if wanted(module.bias):
                yield self._block(module.bias, delta.reshape(n, width, -1, delta.shape[-1]).sum(2))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            spatial = a.dim() - 2
            if spatial == 1:
                a, delta = a[..., None], delta[..., None]
                kernel, stride = (*module.kernel_size, 1), (*module.stride, 1)
                padding, dilation = (*module.padding, 0), (*module.dilation, 1)
            else:
                kernel, stride = module.kernel_size, module.stride
                padding, dilation = module.padding, module.dilation
            patches = nn.functional.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)
            d = delta.reshape(n, width, delta.shape[2], -1)  # (n, T, C_out, L)
            if wanted(module.weight):
                products = torch.einsum("ntcl,nkl->ntck", d, patches)
                yield self._block(module.weight, products.reshape(n, width, -1))
            if wanted(module.bias):
                yield self._block(module.bias, d.sum(-1))
        elif isinstance(module, nn.Embedding):
            if wanted(module.weight):
                ids = a.reshape(n, -1)
                d = delta.reshape(n, width, ids.shape[1], -1)  # (n, T, L, dim)
                rows = d.new_zeros(n, width, module.num_embeddings, d.shape[-1])
                for i in range(n):  # rows of the tokens of input i (a token used twice sums)
                    rows[i].index_add_(1, ids[i], d[i])
                yield self._block(module.weight, rows.reshape(n, width, -1))
        else:  # normalisations: γ ⊙ â + β
            normalised = self._normalised(module, a).to(delta.dtype)
            if wanted(module.weight):
                scaled = delta * normalised[:, None]
                yield self._block(module.weight, self._affine_sum(module, scaled, n, width))
            if wanted(module.bias):
                yield self._block(module.bias, self._affine_sum(module, delta, n, width))

    @staticmethod
    def _normalised(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.LayerNorm):
            dims = tuple(range(a.dim() - len(module.normalized_shape), a.dim()))
            mean = a.mean(dims, keepdim=True)
            var = a.var(dims, unbiased=False, keepdim=True)
            return (a - mean) / torch.sqrt(var + module.eps)
        if isinstance(module, nn.GroupNorm):
            grouped = a.reshape(a.shape[0], module.num_groups, -1)
            mean = grouped.mean(-1, keepdim=True)
            var = grouped.var(-1, unbiased=False, keepdim=True)
            return ((grouped - mean) / torch.sqrt(var + module.eps)).reshape(a.shape)
        shape = (1, -1) + (1,) * (a.dim() - 2)  # BatchNorm in eval mode: running statistics
        mean = module.running_mean.to(torch.float64).reshape(shape)
        var = module.running_var.to(torch.float64).reshape(shape)
        return (a - mean) / torch.sqrt(var + module.eps)

    @staticmethod
    def _affine_sum(module: nn.Module, values: torch.Tensor, n: int, width: int) -> torch.Tensor:
        """Sum ``(n, T, *z)`` over everything but the affine parameter's own dimensions."""
        if isinstance(module, nn.LayerNorm):
            size = module.weight.numel()
            return values.reshape(n, width, -1, size).sum(2)
        return values.reshape(n, width, values.shape[2], -1).sum(-1)  # channels: dim 1 of z

    @staticmethod
    def _combine(parts: list[ParameterDerivatives], n: int, width: int) -> ParameterDerivatives:
        """One block per parameter: the sum of its uses (tied weights), plain layout when several."""
        if len(parts) == 1:
            return parts[0]
        total = sum(p.first if p.inputs is None else
                    (p.first[:, :, :, None] * p.inputs[:, None, None, :]).reshape(n, width, -1)
                    for p in parts)
        zero = torch.zeros((), dtype=total.dtype, device=total.device).expand(total.shape)
        return ParameterDerivatives(parts[0].name, parts[0].shape, total, zero)
