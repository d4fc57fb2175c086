"""The structured engine: exact per-sample derivatives of feed-forward stacks at the cost of a
few gradients (docs/theory.md §9).

For a chunk of inputs:

1. **forward** through the flattened module list, each rule keeping what it needs;
2. **backward** of the T output directions, ``G_k = ∂h/∂(output of k)`` (``G_L = I_T``); at every
   activation with curvature ``r^a_k = φ''(z_k) ⊙ G^a`` (docs/theory.md §6);
3. for every layer with analysed parameters, ``u = tangent·G`` at its output and
   ``w^a = Σ_k Σ_j r^a_k[j] (∂z_k[j]/∂θ)²`` over the activations after it, the tangent
   ``∂z_k/∂θ`` being pushed forward module by module (:mod:`.tangents`).

A ``Linear`` layer's weight comes out factored (``u = G[:, j] a_m``, ``w = Hdiag[:, j] a_m²``,
[A] eq. 19), so every per-parameter sum over inputs is one GEMM in :mod:`fimvar.estimators.diagonal`.
Nothing is kept beyond one chunk, whose size follows the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.structured.rules import RULES, Rule
from fimvar.errors import FimvarError

#: most inputs per chunk: beyond this, larger chunks only cost memory (peak memory is flat in N)
MAX_CHUNK = 1024
#: float64 per-input values that the estimators keep per derivative column (statistics.block_sums
#: tabulates about 16 quantities per column before summing them over inputs)
STATISTICS_COLUMNS = 16
#: bytes a tangent (with its temporaries) may take; larger ones are pushed a few inputs at a time
TANGENT_BYTES = 8 * 1024**2


def flatten_modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf modules of nested ``Sequential`` containers, in order, with their names (a module
    used twice appears twice)."""
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        leaves = []
        for child_name, child in model._modules.items():
            if child is not None:
                leaves += flatten_modules(child, f"{prefix}{child_name}.")
        return leaves
    return [(prefix[:-1], model)]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the structured engine cannot handle ``model`` (``None`` when it can). The reason
    starts with the module type, e.g. ``"LayerNorm (module '1')"``."""
    seen: dict[int, str] = {}
    for name, module in flatten_modules(model):
        label = f"module '{name}'" if name else "the model itself"
        rule = RULES.get(type(module))
        if rule is None:
            return f"{type(module).__name__} ({label})"
        reason = rule.unsupported(module)
        if reason is not None:
            return f"{reason} ({label})"
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                return (f"{type(module).__name__} ({label}) shares a parameter with "
                        f"module '{seen[id(parameter)]}'")
            seen[id(parameter)] = name
    return None


@dataclass
class _Footprint:
    """Elements one input needs, measured on a probe (for :meth:`StructuredEngine.chunk_size`)."""

    held: int = 0  # forward caches, stored G and r
    tangent: int = 0  # largest tangent (pushed a few inputs at a time, see TANGENT_BYTES)
    derivatives: int = 0  # derivative blocks (the model's type)
    columns: int = 0  # derivative columns J, summed over blocks


class StructuredEngine(Engine):
    """Exact derivatives of ``Sequential`` stacks of supported modules (see :data:`RULES`)."""

    name = "structured"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int) -> None:
        super().__init__(model, parameter_names, memory_budget)
        reason = unsupported_reason(model)
        if reason is not None:
            raise FimvarError(f"the structured engine does not support {reason}; use "
                              "engine='autodiff' (any module) or engine='auto'")
        self.rules: list[Rule] = [RULES[type(m)](m, name) for name, m in flatten_modules(model)]
        wanted = set(parameter_names)
        # per rule: local parameter name → full name, for the analysed parameters
        self.selected: list[dict[str, str]] = []
        for rule in self.rules:
            full = {local: (f"{rule.name}.{local}" if rule.name else local)
                    for local in rule.parameter_names()}
            self.selected.append({local: name for local, name in full.items() if name in wanted})
        self._footprints: dict[tuple, _Footprint] = {}
        self._meter: _Footprint | None = None
        #: per analysed layer and input shape, how many inputs one tangent push may take
        self._tangent_rows: dict[tuple, int] = {}
        self._input_shape: tuple[int, ...] = ()

    # ------------------------------------------------------------------ memory
    def chunk_size(self, x: torch.Tensor, width: int, draws: int, column_bytes: int = 0,
                   input_bytes: int = 0) -> int:
        """Inputs per chunk: the memory budget (less the tangents' :data:`TANGENT_BYTES`)
        over the bytes one input needs, measured once per input shape on one input, plus what
        the caller adds per input and derivative column (``column_bytes``) and per input."""
        key = tuple(x.shape[1:])
        if key not in self._footprints:
            self._meter = _Footprint()
            try:
                self.derivatives(x[:1])
            finally:
                self._footprints[key], self._meter = self._meter, None
        footprint = self._footprints[key]
        itemsize = torch.finfo(x.dtype).bits // 8 if x.is_floating_point() else 8
        per_input = (itemsize * (footprint.held + footprint.derivatives)
                     + (8 * STATISTICS_COLUMNS + column_bytes) * footprint.columns
                     + 8 * 4 * max(draws, 1) * width + input_bytes)
        available = max(self.memory_budget - 4 * TANGENT_BYTES, self.memory_budget // 2)
        return max(1, min(MAX_CHUNK, available // max(per_input, 1)))

    def _hold(self, *tensors: torch.Tensor | None) -> None:
        if self._meter is not None:
            self._meter.held += sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

    # ------------------------------------------------------------------ derivatives
    def derivatives(self, x: torch.Tensor, second: bool = True
                    ) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        """Outputs and derivatives of every analysed parameter; with ``second=False`` only the
        first derivatives ``u`` (``w`` is then a broadcast zero: the exact Fisher alone)."""
        with torch.no_grad():
            return self._derivatives(x, second)

    def _derivatives(self, x: torch.Tensor, want_second: bool = True
                     ) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        rules, selected = self.rules, self.selected
        self._input_shape = tuple(x.shape[1:])
        # 1. forward
        caches = []
        for rule in rules:
            x, cache = rule.forward(x)
            caches.append(cache)
            self._hold(*(cache if isinstance(cache, tuple) else (cache,)))
        n = x.shape[0]
        h = x.reshape(n, -1)
        width = h.shape[1]
        analysed = [k for k, names in enumerate(selected) if names]
        if not analysed:
            return h.to(torch.float64), []
        curved = [k for k, rule in enumerate(rules)
                  if want_second and rule.curvature and k > analysed[0]]
        # 2. backward of the T output directions
        g = torch.eye(width, dtype=x.dtype, device=x.device).expand(n, width, width)
        g = g.reshape(n, width, *x.shape[1:])
        G: dict[int, torch.Tensor] = {}
        r: dict[int, torch.Tensor] = {}
        for k in range(len(rules) - 1, analysed[0] - 1, -1):
            if selected[k]:
                G[k] = g
                self._hold(g)
            if k in curved:
                r[k] = rules[k].derivatives(caches[k])[1][:, None] * g
                self._hold(r[k])
            if k > analysed[0]:
                g = rules[k].backward(caches[k], g)
        # 3. u and w of every analysed layer
        blocks: dict[str, ParameterDerivatives] = {}
        for l in analysed:
            rule = rules[l]
            tangent = rule.tangent(caches[l])
            if self._meter is not None:
                self._meter.held += tangent.numel()
            first = tangent.contract(G.pop(l), 1)
            later = [k for k in curved if k > l]
            if later:
                second = self._second(l, later, caches, r, n)
            else:
                second = torch.zeros_like(first) if want_second else None
            for block in rule.emit(caches[l], first, second, selected[l]):
                blocks[block.name] = block
                if self._meter is not None:
                    self._meter.derivatives += block.first.numel() + block.second.numel() + (
                        0 if block.inputs is None else block.inputs.numel())
                    self._meter.columns += block.first.shape[2]
        ordered = [blocks[name] for name in self.parameter_names]
        return h.to(torch.float64), ordered

    def _second(self, l: int, later: list[int], caches: list, r: dict, n: int) -> torch.Tensor:
        """``w^a = Σ_k Σ_j r^a_k[j] (∂z_k[j]/∂θ)²`` for the directions of layer ``l``, the tangent
        pushed through the layers up to the last activation with curvature. Runs over groups of
        inputs so that the tangent stays within :data:`TANGENT_BYTES` (its size per input is
        measured on the first input)."""
        parts = []
        start = 0
        while start < n:
            key = (l, self._input_shape)
            step = self._tangent_rows.get(key, 1)
            rows = slice(start, min(n, start + step))
            tangent = self.rules[l].tangent(_rows(caches[l], rows, n))
            peak = tangent.numel()
            total = None
            for k in range(l + 1, later[-1] + 1):
                if k in r:
                    term = tangent.contract(r[k][rows], 2)
                    total = term if total is None else total + term
                if k < later[-1]:
                    tangent = self.rules[k].push(_rows(caches[k], rows, n), tangent)
                    peak = max(peak, tangent.numel())
            parts.append(total)
            count = rows.stop - rows.start
            if self._meter is not None:
                self._meter.tangent = max(self._meter.tangent, peak // count)
            if key not in self._tangent_rows:
                per_input = 3 * total.element_size() * max(1, peak // count)
                self._tangent_rows[key] = max(1, TANGENT_BYTES // per_input)
            start = rows.stop
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _rows(cache, rows: slice, n: int):
    """The part of a rule's cache that belongs to the inputs ``rows`` (caches hold per-input
    tensors, whose first axis has the chunk's ``n`` inputs, and plain Python values)."""
    if isinstance(cache, torch.Tensor):
        return cache[rows] if cache.dim() > 0 and cache.shape[0] == n else cache
    if isinstance(cache, tuple):
        return tuple(_rows(item, rows, n) for item in cache)
    return cache
