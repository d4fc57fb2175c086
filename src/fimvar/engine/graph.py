"""First derivatives of any module graph from hooks around its layers (docs/theory.md §14).

One forward pass of the whole chunk records, at every supported layer, its input ``a`` and its
output ``z``; then one backward pass per output column ``t`` (autograd through whatever the model
does between the layers: residual additions, attention, normalisation, custom code) gives
``δ_t = ∂h_t/∂z`` for every input at once — per input, because the inputs of a chunk do not
interact (fimvar analyses in eval mode). A layer's parameter derivatives follow from ``δ`` and
``a`` in closed form:

- ``Linear``: ``∂h_t/∂W = Σ_p δ_{t,p} a_pᵀ`` over the positions p of a sequence input (a factored
  ``δ ⊗ a`` when there is one position), ``∂h_t/∂b = Σ_p δ_{t,p}``; ``transformers``' ``Conv1D``
  (GPT-2's ``x @ W + b``, ``W`` of shape (in, out)) the same, transposed;
- ``Conv1d``/``Conv2d`` (``groups = 1``): the same with the unfolded input patches;
- ``Embedding``: ``δ`` scattered into the rows of the looked-up tokens;
- ``LayerNorm``, ``BatchNorm`` (eval), ``GroupNorm``: ``∂h_t/∂γ = Σ δ_t ⊙ â``, ``∂h_t/∂β = Σ δ_t``
  with ``â`` the normalised input.

A parameter used by several layers (tied weights) gets the sum of its uses. Parameters outside
these layers (e.g. a ``MultiheadAttention``'s projections, a bare ``nn.Parameter``) are
differentiated by the autodiff engine, restricted to them. The cost is one forward and T
backward passes of the chunk plus the per-input products. For the exact Fisher alone,
:meth:`GraphEngine.fisher_sums` backpropagates the columns of a square root of ``I(h)`` instead
of the unit columns and sums the squared per-input gradients as they come, like BackPACK's
exact GGN diagonal (docs/theory.md §14.2).

Second derivatives ``w`` are not computed: built with ``second=True``, the engine estimates the
second-order quantities without bias from Hutchinson probes instead (:meth:`GraphEngine.probe_estimates`,
docs/theory.md §14.1): two per-sample Hessian-vector products per label draw (double backward,
input by input), of every selected parameter at once, whatever the number of outputs.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from fimvar.engine.autodiff import AutodiffEngine
from fimvar.engine.base import Engine, ParameterDerivatives
from fimvar.engine.functional import buffers_kept, differentiable, module_output_sizes, output_tensor
from fimvar.errors import FimvarError

NORMALISATIONS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
#: most columns of a square root of I(h) per batched backward pass (GraphEngine.fisher_sums)
COLUMN_GROUP = 64
#: column counts up to which the backward passes are not batched (a classifier's T classes)
BATCHED_COLUMNS_FROM = 16
#: a convolution with at most this many output positions per column of the square root squares
#: its per-input gradients by position Gram matrices (GraphEngine._prepare_position_grams)
GRAM_POSITIONS_PER_COLUMN = 2


def _is_transposed_linear(module: nn.Module) -> bool:
    """``transformers``' ``Conv1D`` (GPT-2's projections): ``x @ W + b`` with ``W`` of shape
    ``(in, out)``, recognised by name and shape (no import of transformers)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and getattr(module, "nf", None) == weight.shape[1])


def _supported(module: nn.Module) -> bool:
    if _is_transposed_linear(module):
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    if isinstance(module, nn.LayerNorm):
        return module.elementwise_affine
    if isinstance(module, nn.modules.batchnorm._BatchNorm):  # eval mode: running statistics
        return module.affine and module.track_running_stats
    if isinstance(module, nn.GroupNorm):
        return module.affine
    return isinstance(module, (nn.Linear, nn.Embedding))


def _batch_free(model: nn.Module, x: torch.Tensor, modules) -> set[nn.Module]:
    """The modules called on something without the batch dimension (e.g. BERT's position
    embeddings on ids of shape ``(1, L)``, broadcast over the batch): their outputs are shared by
    the inputs, so ``∂h/∂z`` sums over them and the hooks cannot give per-input derivatives.
    Found by one forward of two inputs (the first one twice if there is one)."""
    pair = x[:2] if x.shape[0] >= 2 else torch.cat([x[:1], x[:1]])
    found: set[nn.Module] = set()

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() == 0 or output.shape[0] != 2:
            found.add(module)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad(), buffers_kept(model):
            model(pair)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _batch_one(output) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() >= 1 and output.shape[0] == 1


def _expandable(model: nn.Module, x: torch.Tensor, modules: set[nn.Module]) -> set[nn.Module]:
    """The embeddings among ``modules`` called on batch-free ids (GPT-2's and BERT's position
    embeddings on ``(1, L)``) whose output can be expanded to the batch, one copy per input, for the
    hooks to give per-input derivatives (docs/theory.md §14): with the copies the model's outputs
    are the same bit for bit, and perturbing the copy of one input of a pair changes nothing in the
    other input's outputs (the rest of the forward only broadcasts the output, it does not pick or
    mix its copies). Checked by forwards of two inputs; none if any check fails."""
    candidates = {m for m in modules if isinstance(m, nn.Embedding)}
    if not candidates:
        return set()
    pair = x[:2] if x.shape[0] >= 2 else torch.cat([x[:1], x[:1]])

    def forward(perturbed: int | None) -> torch.Tensor:
        def expand(module, inputs, output):
            if not _batch_one(output):
                return None
            copies = output.expand(2, *output.shape[1:]).clone()
            if perturbed is not None:
                copies[perturbed] += 1.0 + copies[perturbed].abs()
            return copies

        handles = [m.register_forward_hook(expand) for m in candidates]
        try:
            return output_tensor(model(pair)).reshape(2, -1)
        finally:
            for handle in handles:
                handle.remove()

    with torch.no_grad(), buffers_kept(model):
        try:
            plain = output_tensor(model(pair)).reshape(2, -1)
            copies, first, second = forward(None), forward(0), forward(1)
        except Exception:  # noqa: BLE001 — the forward needs the batch-free shape: keep the fallback
            return set()
    separate = torch.equal(first[1], plain[1]) and torch.equal(second[0], plain[0])
    return candidates if torch.equal(plain, copies) and separate else set()


def _graph_uses(root, tensor: torch.Tensor) -> int:
    """How many edges of the autograd graph below ``root`` lead into ``tensor``'s gradient
    accumulator: the uses of a parameter by the differentiated forward (a weight tied to another
    layer, or used by custom code, has more than one)."""
    count, seen, stack = 0, set(), [root]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            if getattr(child, "variable", None) is tensor:
                count += 1
            stack.append(child)
    return count


def _same_values(output: torch.Tensor, recorded: torch.Tensor) -> bool:
    """Whether ``output`` is ``recorded`` itself or a reshaped view of it with the same elements in
    the same order (same storage, offset, count, both contiguous)."""
    if output is recorded:
        return True
    return (output.dtype == recorded.dtype and output.numel() == recorded.numel()
            and output.data_ptr() == recorded.data_ptr() and output.is_contiguous()
            and recorded.is_contiguous() and output.dim() >= 1 and output.shape[0] == recorded.shape[0])


class GraphEngine(Engine):
    """Hook-based first derivatives for any module graph (see the module docs)."""

    name = "graph"

    def __init__(self, model: nn.Module, parameter_names: list[str], memory_budget: int,
                 second: bool = False) -> None:
        super().__init__(model, parameter_names, memory_budget)
        #: whether the analysis needs second-order quantities: estimated by probes
        self.estimates_second = second
        self.names = {id(p): name for name, p in model.named_parameters() if name in parameter_names}
        self.layers: dict[str, nn.Module] = {
            name: module for name, module in model.named_modules()
            if _supported(module) and any(id(p) in self.names for p in module.parameters(recurse=False))}
        self.fallback: AutodiffEngine | None = None
        #: embeddings called on batch-free ids whose output the recorded forward expands to the batch
        self.expanded: set[nn.Module] = set()
        self._discovered = False
        #: whether fisher_sums batches its backward passes over columns (off after a model
        #: operation without a batching rule)
        self.batch_columns = True

    def _discover(self, x: torch.Tensor) -> None:
        """One probing forward: keep the layers the forward really calls as modules
        (``nn.MultiheadAttention`` uses its ``out_proj`` weight functionally, for one), count the
        elements they output (for the chunk size); every other parameter goes to the autodiff
        engine."""
        if self._discovered:
            return
        sizes = module_output_sizes(self.model, x, self.layers.values())
        self._activation_elements = max(sum(sizes.values()), 1)
        shared = _batch_free(self.model, x, self.layers.values())
        self.expanded = _expandable(self.model, x, shared)
        shared -= self.expanded
        self.layers = {name: m for name, m in self.layers.items() if m in sizes and m not in shared}
        covered = {self.names[id(p)] for m in self.layers.values() for p in m.parameters(recurse=False)
                   if id(p) in self.names}
        others = [name for name in self.parameter_names if name not in covered]
        self.fallback = AutodiffEngine(self.model, others, self.memory_budget) if others else None
        self._discovered = True

    def chunk_size(self, x: torch.Tensor, width: int, draws: int, column_bytes: int = 0,
                   input_bytes: int = 0, factored: bool = False, streamed: bool = False) -> int:
        """Inputs per chunk within the memory budget; ``factored``: for :meth:`fisher_sums`, which
        holds one column's per-input gradients (and their float64 squares) at a time;
        ``streamed``: for :meth:`streamed_derivatives`, consumed layer by layer (every output
        column's gradients at every layer, one layer's per-input gradients and their float64
        statistics at a time)."""
        self._discover(x)
        params = sum(p.numel() for n, p in self.model.named_parameters() if n in self.parameter_names)
        activations = self._activation_elements
        itemsize = next(self.model.parameters()).element_size()
        probes = 2 * max(draws, 1) if self.estimates_second else 0
        if streamed:  # the statistics are formed in tiles of all inputs: no per-input term
            widest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in self.layers.values()),
                         default=params)
            per_input = (itemsize * width * (activations + 2 * widest) + 8 * 4 * activations
                         + probes * 2 * itemsize * params)
            return self._limited(x, width, draws, per_input)
        # per input: the derivatives (T·P, float64, with room for the per-layer products), the
        # recorded layer inputs/outputs and one output column's gradients
        derivatives = (itemsize + 8) * params if factored else itemsize * 3 * width * params
        per_input = derivatives + 8 * 4 * activations + column_bytes * params + input_bytes
        if self.estimates_second:  # the plain layout and 2M probes (signs, estimates, their
            # float64 products); the double backward runs one input at a time
            per_input += 8 * width * params + probes * params * (2 * itemsize + 8 * 4)
        return self._limited(x, width, draws, per_input)

    def _limited(self, x: torch.Tensor, width: int, draws: int, per_input: int) -> int:
        """Inputs per chunk for ``per_input`` bytes each, within what the fallback allows."""
        size = max(1, min(4096, self.memory_budget // max(per_input, 1)))
        if self.fallback is not None:
            size = min(size, self.fallback.chunk_size(x, width, draws))
        return size

    def derivatives(self, x: torch.Tensor, second: bool = True
                    ) -> tuple[torch.Tensor, list[ParameterDerivatives]]:
        if second and not self.estimates_second:
            raise FimvarError("this graph engine was built for first derivatives only; build it with "
                              "second=True (second-order quantities estimated by probes) or use "
                              "engine='autodiff' for exact ones")
        h, blocks = self.streamed_derivatives(x)
        return h, self._in_order(list(blocks))

    def streamed_derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, Iterator[ParameterDerivatives]]:
        """:meth:`derivatives` (first derivatives ``u``, ``(n, T, J)`` per block, in the model's
        dtype; one backward pass of the chunk per output column) with the blocks as an iterator
        in the order of the layers, each formed as it is consumed (one layer's per-input
        gradients held at a time, :meth:`_streamed_blocks`; docs/theory.md §14.3), the
        parameters outside the hooked layers (the autodiff fallback) last. Returns ``h``
        (float64) and the iterator."""
        with contextlib.ExitStack() as stack, torch.enable_grad():
            outputs, records = self._recorded_forward(x, stack)
            n, width = outputs.shape
            units = torch.eye(width, dtype=outputs.dtype, device=outputs.device).expand(n, width, width)
            group = self._column_group(x, outputs, width)
            gradients = [[] for _ in records]
            for start in range(0, width, group):  # the unit columns e_t, batched (see fisher_sums)
                chosen = units[:, :, start:start + group]
                found = self._column_gradients(outputs, [z for _, _, z in records], chosen,
                                               retain=start + group < width)
                for store, (_, _, z), g in zip(gradients, records, found, strict=True):
                    store.append(z.new_zeros(n, chosen.shape[2], *z.shape[1:]) if g is None else g)
        # (n, T, *z) per layer, in the model's dtype like its derivatives; one group of columns is
        # taken as it is (no copy), several are joined one layer at a time, the parts let go
        joined = []
        for store in gradients:
            joined.append(store[0] if len(store) == 1 else torch.cat(store, 1))
            store.clear()
        blocks = self._streamed_blocks(records, joined)
        if self.fallback is not None:
            blocks = itertools.chain(blocks, self.fallback.derivatives(x, second=False)[1])
        return outputs.detach().to(torch.float64), blocks

    def _combined_blocks(self, records, gradients: list[torch.Tensor | None],
                         contexts: list[dict] | None = None) -> dict[str, ParameterDerivatives]:
        """One block per hooked parameter from the recorded layers and their output gradients
        (``(n, G, *z)`` each, ``None`` where no output depends on the layer): the layer rules of
        :meth:`_layer_derivatives`, the uses of a tied parameter summed (:meth:`_streamed_blocks`,
        all at once)."""
        return {block.name: block for block in self._streamed_blocks(records, gradients, contexts)}

    def _in_order(self, blocks: list[ParameterDerivatives]) -> list[ParameterDerivatives]:
        order = {name: i for i, name in enumerate(self.parameter_names)}
        return sorted(blocks, key=lambda b: order[b.name])

    def _recorded_forward(self, x: torch.Tensor, stack: contextlib.ExitStack
                          ) -> tuple[torch.Tensor, list[tuple[nn.Module, torch.Tensor, torch.Tensor]]]:
        """One forward of the chunk (under the caller's ``enable_grad``) recording, at every hooked
        layer, its input ``a`` and output ``z``; the outputs flattened to ``(n, T)``. The model's
        buffers are restored when the caller's ``stack`` closes, after its backward passes."""
        self._discover(x)
        records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

        def record(name):
            def hook(module, inputs, output):
                a = inputs[0]
                if module in self.expanded and _batch_one(output):  # per-input copies (_expandable)
                    output = output.expand(x.shape[0], *output.shape[1:])
                    a = a.expand(x.shape[0], *a.shape[1:])
                if output.shape[0] != x.shape[0]:  # _discover leaves such layers to autodiff
                    raise FimvarError(f"layer {name!r} returned {tuple(output.shape)} for a chunk of "
                                      f"{x.shape[0]} inputs; analyse it with engine='autodiff'")
                records.append((module, a.detach().clone(), output))
                return output.clone()  # later in-place operations must not touch the recorded z
            return hook

        stack.enter_context(buffers_kept(self.model))
        with contextlib.ExitStack() as hooks:
            for name, module in self.layers.items():
                hooks.callback(module.register_forward_hook(record(name)).remove)
            outputs = output_tensor(self.model(x))
        return outputs.reshape(outputs.shape[0], -1), records

    def fisher_sums(self, x: torch.Tensor, factor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[ParameterDerivatives]]:
        """The exact diagonal Fisher summed over the chunk, from a square root of ``I(h)``
        (docs/theory.md §14.2): ``Σ_x I(θ|x) = Σ_x Σ_k (J_θᵀ S_k)²`` with ``S = factor(h)``
        (``(n, T, K)``, float64): one backward pass of the chunk per column ``k`` with the
        cotangent ``S_k``, the per-input gradients of every hooked layer squared and summed as
        they come (no per-input ``T × P`` derivative tensor, no contraction with ``I(h)``).
        Columns that are zero for every input of the chunk (masked positions, probabilities that
        underflow) are skipped. Returns ``h`` (float64), the sums of the hooked
        parameters and the derivative blocks of the others (the autodiff fallback)."""
        sums: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as stack, torch.enable_grad():
            outputs, records = self._recorded_forward(x, stack)
            h = outputs.detach().to(torch.float64)
            roots = factor(h)
            columns = roots.ne(0).any(1).any(0).nonzero()[:, 0].tolist()
            cotangents = roots.to(outputs.dtype)
            square_precision = torch.promote_types(outputs.dtype, torch.float32)
            contexts: list[dict] = [{} for _ in records]  # per layer: unfolded patches, â
            self._prepare_position_grams(records, contexts, len(columns))
            group = self._column_group(x, outputs, len(columns))
            for start in range(0, len(columns), group):
                chosen = columns[start:start + group]
                found = self._column_gradients(outputs, [z for _, _, z in records], cotangents[:, :, chosen],
                                               retain=start + group < len(columns))
                for name, block in self._combined_blocks(records, found, contexts).items():
                    # the chunk's squares are summed over its inputs in (at least) float32 when
                    # the model is: all terms are positive, so the relative error stays below
                    # log₂(n·G)·2⁻²⁴ (pairwise summation); over column groups and chunks in float64
                    first = block.first
                    if block.inputs is None:
                        first = first.to(square_precision)
                        square = torch.einsum("ngj,ngj->j", first, first).to(torch.float64)
                        square = square.reshape(block.shape)
                    else:
                        square = block.reduce((first.to(torch.float64) ** 2).sum(1), 2)
                    sums[name] = sums[name] + square if name in sums else square
        for (module, _, _), context in zip(records, contexts, strict=True):
            if "gram" in context and "patches" in context:
                name = self.names[id(module.weight)]
                sums[name] = sums.get(name, 0) + self._position_gram_square(context, module.weight.shape)
        for module in self.layers.values():  # a hooked parameter no output depends on
            for p in module.parameters(recurse=False):
                if id(p) in self.names and self.names[id(p)] not in sums:
                    sums[self.names[id(p)]] = torch.zeros(p.shape, dtype=torch.float64, device=p.device)
        others = self.fallback.derivatives(x, second=False)[1] if self.fallback is not None else []
        return h, sums, others

    def output_linear(self, x: torch.Tensor) -> str | None:
        """The hooked ``nn.Linear`` whose output is provably the model's output (docs/theory.md
        §17.1), or ``None``. One probing forward of the first input checks that the layer is a
        plain ``nn.Linear`` (its own forward, no hooks of the user's on it), called once, that the
        model returns its output tensor itself or a reshaped view of it (same elements in the same
        order, not modified in place afterwards: nothing is applied after the layer) and that each
        of its selected parameters has exactly one use in the autograd graph (so the layer's
        input does not depend on them: a weight tied to an embedding has two)."""
        self._discover(x)
        candidates = {name: m for name, m in self.layers.items()
                      if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward
                      and not m._forward_hooks and not m._forward_pre_hooks}
        if not candidates:
            return None
        calls: dict[str, list[tuple[torch.Tensor, int]]] = {}

        def record(name):
            def hook(module, inputs, output):
                calls.setdefault(name, []).append((output, output._version))
            return hook

        with contextlib.ExitStack() as stack, torch.enable_grad():
            stack.enter_context(buffers_kept(self.model))
            for name, module in candidates.items():
                stack.callback(module.register_forward_hook(record(name)).remove)
            output = output_tensor(self.model(x[:1]))
            if output.grad_fn is None:
                return None
            for name, module in candidates.items():
                seen = calls.get(name, [])
                if len(seen) != 1 or not _same_values(output, seen[0][0]) or output._version != seen[0][1]:
                    continue
                selected = [p for p in module.parameters(recurse=False) if id(p) in self.names]
                if selected and all(_graph_uses(output.grad_fn, p) == 1 for p in selected):
                    return name
        return None

    def draw_gradients(self, x: torch.Tensor, residuals, keep: tuple[str, ...] = ()
                       ) -> tuple[torch.Tensor, Iterator[ParameterDerivatives], dict[str, torch.Tensor]]:
        """Per-input gradients of ``ε_m·h`` for label draws ``ε_m`` — the scores whose squares are
        Î1 (docs/theory.md §17) — at every hooked layer: one backward pass per draw (batched),
        whatever the number of outputs T. ``residuals(h)`` gives ``(n, M, T)``; returns ``h``
        (float64) and one block per parameter whose ``first`` is ``(n, M, J)`` (``T`` replaced by
        the draws; factored for a ``Linear`` on one position). Parameters outside the hooked
        layers (a batch-shared position embedding, attention projections used functionally) get
        theirs input by input from ``torch.func`` (vmapped over the draws). ``keep``: hooked
        layers (called once) whose recorded inputs are returned too, ``{name: a}``. The blocks come
        as an iterator in the order of the layers, each computed as it is consumed."""
        self._discover(x)
        with contextlib.ExitStack() as stack, torch.enable_grad():
            outputs, records = self._recorded_forward(x, stack)
            modules = {id(module): name for name, module in self.layers.items() if name in keep}
            kept = {modules[id(module)]: a for module, a, _ in records if id(module) in modules}
            h = outputs.detach().to(torch.float64)
            draws = residuals(h)  # (n, M, T)
            cotangents = draws.transpose(1, 2).to(outputs.dtype)
            found = self._column_gradients(outputs, [z for _, _, z in records], cotangents, retain=False)
        blocks = self._streamed_blocks(records, found)
        if self.fallback is not None:
            blocks = itertools.chain(blocks, self._functional_draw_gradients(x, draws.to(outputs.dtype)))
        return h, blocks, kept

    def _streamed_blocks(self, records, gradients: list[torch.Tensor | None],
                         contexts: list[dict] | None = None) -> Iterator[ParameterDerivatives]:
        """The blocks of the hooked parameters one at a time, in the order of the layers, each
        computed when asked for (a tied parameter's earlier uses kept until its last), so that a
        caller that consumes and drops them holds one layer's per-input gradients at a time.
        ``contexts``: per record, what :meth:`_layer_derivatives` keeps between calls."""
        remaining: dict[str, int] = {}
        for (module, _, _), g in zip(records, gradients, strict=True):
            if g is not None:
                for p in module.parameters(recurse=False):
                    if id(p) in self.names:
                        remaining[self.names[id(p)]] = remaining.get(self.names[id(p)], 0) + 1
        pending: dict[str, list[ParameterDerivatives]] = {}
        for index, ((module, a, _), g) in enumerate(zip(records, gradients, strict=True)):
            if g is None:
                continue
            context = None if contexts is None else contexts[index]
            for part in self._layer_derivatives(module, a, g, context, tied=remaining):
                pending.setdefault(part.name, []).append(part)
                remaining[part.name] -= 1
                if remaining[part.name] == 0:
                    yield self._combine(pending.pop(part.name))
        for parts in pending.values():  # a use that gave no block (e.g. kept in a context)
            yield self._combine(parts)

    def _functional_draw_gradients(self, x: torch.Tensor, draws: torch.Tensor) -> list[ParameterDerivatives]:
        """:meth:`draw_gradients` of the parameters outside the hooked layers: per input, the
        gradient of ``ε_m·h`` by ``torch.func.grad`` of a functional call, vmapped over the draws."""
        names = self.fallback.parameter_names
        selected, constants = self._split_parameters(names)
        per_input = []
        with differentiable(self.model):
            for i in range(x.shape[0]):
                contracted = self._contraction(x[i : i + 1], constants)
                per_input.append(vmap(grad(contracted), in_dims=(None, 0))(selected, draws[i]))
        blocks = []
        for name in names:
            first = torch.stack([g[name].reshape(draws.shape[1], -1) for g in per_input])  # (n, M, J)
            zero = torch.zeros((), dtype=first.dtype, device=first.device).expand(first.shape)
            blocks.append(ParameterDerivatives(name, selected[name].shape, first, zero))
        return blocks

    def _split_parameters(self, names) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The parameters ``names`` (detached) and every other parameter and buffer: the two halves
        of a functional call that differentiates the first."""
        named = dict(self.model.named_parameters())
        selected = {k: named[k].detach() for k in names}
        constants = {k: v.detach() for k, v in named.items() if k not in selected}
        constants.update(dict(self.model.named_buffers()))
        return selected, constants

    def _contraction(self, x1: torch.Tensor, constants: dict[str, torch.Tensor]):
        """``f(params, c) = c·h(x1; params)`` for one input ``x1``, a functional call."""
        def contracted(params, coefficients):
            outputs = functional_call(self.model, (params, constants), (x1,))
            return output_tensor(outputs).reshape(-1) @ coefficients
        return contracted

    def _prepare_position_grams(self, records, contexts: list[dict], columns: int) -> None:
        """Mark the convolutions whose weight's squared per-input gradients are cheaper as a
        product of Gram matrices over output positions (docs/theory.md §14.2): with ``δ_k`` the
        ``(C_out, L)`` gradient at the output for column k and ``X`` the ``(K, L)`` unfolded
        input, ``Σ_k (δ_k Xᵀ)²`` entry by entry is ``Σ_{l,m} (Σ_k δ_kl δ_km) (X_l X_m)`` — one
        float64 matrix product per chunk over ``n L²`` terms instead of a ``C_out × K`` per-input
        gradient per column, worth it where ``L ≤`` :data:`GRAM_POSITIONS_PER_COLUMN` ``× columns``
        (a ResNet's last stage: 4×4 positions, 10 classes), and done only for a weight used by
        one layer (tied weights sum their per-input gradients before the square)."""
        uses: dict[int, int] = {}
        for module, _, _ in records:
            weight = getattr(module, "weight", None)
            if weight is not None:
                uses[id(weight)] = uses.get(id(weight), 0) + 1
        for (module, _, z), context in zip(records, contexts, strict=True):
            if not isinstance(module, (nn.Conv1d, nn.Conv2d)) or id(module.weight) not in self.names:
                continue
            positions = z[0, 0].numel()
            size = z.shape[0] * positions**2 * (z.shape[1] + module.weight[0].numel()) * 8
            cheaper = positions <= GRAM_POSITIONS_PER_COLUMN * columns
            if uses[id(module.weight)] == 1 and cheaper and 4 * size <= self.memory_budget:
                context["gram"] = torch.zeros(z.shape[0], positions, positions, z.shape[1],
                                              dtype=torch.float64, device=z.device)

    @staticmethod
    def _position_gram_square(context: dict, shape: torch.Size) -> torch.Tensor:
        """``Σ_x Σ_k (δ_k Xᵀ)²`` from the accumulated ``Σ_k δ_k δ_kᵀ`` (``(n, L, L, C)``) and the
        unfolded inputs ``X`` (``(n, K, L)``), in float64."""
        gram = context["gram"]
        patches = context["patches"].to(torch.float64)
        inputs = torch.einsum("nkl,nkm->nlmk", patches, patches)
        return (gram.reshape(-1, gram.shape[-1]).T @ inputs.reshape(-1, inputs.shape[-1])).reshape(shape)

    def _column_group(self, x: torch.Tensor, outputs: torch.Tensor, columns: int) -> int:
        """Columns of the square root per batched backward pass: as many as the memory budget
        holds (each one a copy of the chunk's activation gradients and of the per-input
        gradients of one layer at a time), at most :data:`COLUMN_GROUP`; one when there are at
        most :data:`BATCHED_COLUMNS_FROM` columns (a classifier: batching would only multiply the
        memory, the per-input products dominate; measured on ResNet-18)."""
        if not self.batch_columns or columns <= BATCHED_COLUMNS_FROM:
            return 1
        # the per-input gradients are formed layer by layer: the largest layer's count
        widest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in self.layers.values()),
                     default=0)
        per_column = x.shape[0] * (8 * self._activation_elements + 3 * widest) * outputs.element_size()
        return max(1, min(columns, COLUMN_GROUP, self.memory_budget // max(per_column, 1)))

    def _column_gradients(self, outputs: torch.Tensor, nodes: list[torch.Tensor], cotangents: torch.Tensor,
                          retain: bool) -> list[torch.Tensor | None]:
        """``∂(S_k·h)/∂z`` at every recorded node for the columns ``cotangents`` (``(n, T, G)``),
        each ``(n, G, *z)``: one backward pass batched over the G columns by autograd's vmap
        (``is_grads_batched``; first order, where its cost is linear in G), or G passes if an
        operation of the model has no batching rule (then for the rest of the run)."""
        if cotangents.shape[2] > 1 and self.batch_columns:
            try:
                found = torch.autograd.grad(outputs, nodes, cotangents.permute(2, 0, 1), retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
                return [None if g is None else g.transpose(0, 1) for g in found]
            except RuntimeError:
                self.batch_columns = False
        gradients: list[list[torch.Tensor | None]] = []
        for index in range(cotangents.shape[2]):
            found = torch.autograd.grad(outputs, nodes, cotangents[:, :, index], allow_unused=True,
                                        retain_graph=retain or index < cotangents.shape[2] - 1)
            gradients.append(list(found))
        return [None if column[0] is None else torch.stack(column, 1)
                for column in zip(*gradients, strict=True)]

    def probe_estimates(self, x: torch.Tensor, names: list[str], draws: torch.Tensor, signs: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """For every label draw ``ε_m`` (``(n, M, T)``) two independent Rademacher directions
        ``z, z'`` over the parameters ``names`` (``signs``, ``(n, 2M, P)`` in their order: probes
        ``2m`` and ``2m + 1`` belong to draw ``m``) and ``g = z ⊙ ∇²_θ(ε_m·h) z``, ``g'`` likewise
        (docs/theory.md §14.1), per name ``(n, M, 2, J)``. ``E[g_k] = w_k·ε_m`` and, the two being
        independent given the draw, ``E[g_k g'_k] = (w_k·ε_m)²``."""
        self._discover(x)
        n, samples = draws.shape[:2]
        selected, constants = self._split_parameters(names)
        sizes = [selected[name].numel() for name in names]
        estimates = signs.new_empty(n, samples, 2, sum(sizes))
        group = self._draws_per_call(sum(sizes), samples, 2 * signs.element_size())
        with differentiable(self.model):  # double backward through attention, RNNs
            for i in range(n):  # per input: its Hessian is not that of the batch
                contracted = self._contraction(x[i : i + 1], constants)

                def product(coefficients, direction, contracted=contracted):  # Hz = ∇_θ (zᵀ ∇_θ f)
                    return grad(lambda p: sum((g * direction[k]).sum()
                                              for k, g in grad(contracted)(p, coefficients).items())
                                )(selected)

                for first in range(0, samples, group):
                    chosen = slice(first, min(samples, first + group))
                    z = signs[i, 2 * chosen.start : 2 * chosen.stop]  # (2M', P)
                    directions = {name: part.reshape(-1, *selected[name].shape)
                                  for name, part in zip(names, z.split(sizes, dim=1), strict=True)}
                    coefficients = draws[i, chosen].to(signs.dtype).repeat_interleave(2, dim=0)
                    products = vmap(product)(coefficients, directions)
                    flat = torch.cat([products[name].reshape(z.shape[0], -1) for name in names], 1)
                    estimates[i, chosen] = (z * flat).reshape(-1, 2, z.shape[1])
        return dict(zip(names, estimates.split(sizes, dim=3), strict=True))

    def _draws_per_call(self, parameters: int, samples: int, probe_bytes: int) -> int:
        """Draws per vmapped Hessian-vector product within the memory budget: each holds the
        gradients and one pass's activations, with a factor of 8, ``probe_bytes`` per element and
        draw (the probes of one draw)."""
        per_draw = 8 * (parameters + self._activation_elements) * probe_bytes
        return max(1, min(samples, self.memory_budget // max(per_draw, 1)))

    def likelihood_probes(self, x: torch.Tensor, names: list[str], statistics: torch.Tensor, mean,
                          keep: torch.Tensor | None, signs) -> dict[str, torch.Tensor]:
        """Hutchinson estimates of the diagonal of the negative log-likelihood's Hessian at every
        sampled label (docs/theory.md §17.5): for input ``i`` and draw ``m``, with
        ``t = statistics[i, m]`` (``t(y_m)``, ``(n, M, T)``) and one Rademacher direction
        ``z = signs(i)[m]`` over the parameters ``names`` (``signs(i)``: ``(M, P)`` in their order,
        made one input at a time),
        ``z ⊙ H z`` where ``H = ∇²_θ(A(h) − t·h) = Jᵀ I(h) J − Σ_t (t − η)_t ∇²h_t``, so that
        ``E_z[z ⊙ H z] = diag H``, the Î2 draw. ``Hz`` is the gradient of ``z·∇_θ ℓ`` with
        ``∇_θ ℓ = Jᵀ (η(h) − t)`` formed by a pullback whose cotangent ``η(h(θ)) − t`` is itself
        differentiated (``∂η/∂h = I(h)``): no log-partition function is needed, only the family's
        ``mean``. ``keep`` (``(n, T)`` of 0/1, or ``None``): the outputs that count (left-out
        positions of a language model). Returns per name ``(n, M, J)``."""
        n, samples = statistics.shape[:2]
        selected, constants = self._split_parameters(names)
        sizes = [selected[k].numel() for k in names]
        found = {k: statistics.new_empty(n, samples, size) for k, size in zip(names, sizes, strict=True)}
        group = self._draws_per_call(sum(sizes), samples, 2 * statistics.element_size())
        with differentiable(self.model):  # double backward through attention, RNNs
            for i in range(n):  # per input: its Hessian is not that of the batch
                x1, z_input = x[i : i + 1], signs(i)
                weights = None if keep is None else keep[i].to(statistics.dtype)

                def outputs(params, x1=x1):
                    returned = functional_call(self.model, (params, constants), (x1,))
                    return output_tensor(returned).reshape(1, -1)

                def product(statistic, direction, weights=weights, outputs=outputs):  # Hz = ∇_θ (z·∇_θ ℓ)
                    def along(params):
                        h, pullback = vjp(outputs, params)
                        residual = mean(h.to(statistic.dtype)).to(h.dtype) - statistic[None]
                        if weights is not None:
                            residual = residual * weights
                        (gradient,) = pullback(residual)
                        return sum((gradient[k] * direction[k]).sum() for k in names)
                    return grad(along)(selected)

                for first in range(0, samples, group):
                    chosen = slice(first, min(samples, first + group))
                    parts = dict(zip(names, z_input[chosen].split(sizes, dim=1), strict=True))  # (M', J)
                    directions = {k: part.reshape(-1, *selected[k].shape) for k, part in parts.items()}
                    products = vmap(product)(statistics[i, chosen], directions)
                    for k, part in parts.items():
                        torch.mul(part, products.pop(k).reshape(part.shape), out=found[k][i, chosen])
        return found

    # ------------------------------------------------------------------ per layer
    def _block(self, parameter: torch.Tensor, first: torch.Tensor, inputs=None) -> ParameterDerivatives:
        zero = torch.zeros((), dtype=first.dtype, device=first.device).expand(first.shape)
        return ParameterDerivatives(self.names[id(parameter)], parameter.shape, first, zero, inputs)

    def _layer_derivatives(self, module: nn.Module, a: torch.Tensor, delta: torch.Tensor,
                           context: dict | None = None, tied: dict[str, int] | None = None):
        """The layer's parameter blocks from its input ``a`` and ``δ`` (``(n, T, *z)``);
        ``context`` keeps what depends on ``a`` alone between calls for the same ``a``. Every
        plain block's ``first`` is a new tensor that no one else holds (:meth:`_combine` adds
        into it). ``tied``: the uses still to come per parameter name; an embedding whose weight
        has others (tied to an output layer) gives its token rows alone (``shared["lookup"]``),
        added into the other uses' gradient instead of a dense ``V × dim`` tensor per input."""
        n, width = delta.shape[:2]
        context = {} if context is None else context
        selected = [p for p in module.parameters(recurse=False) if id(p) in self.names]

        def wanted(p):
            return p is not None and any(p is q for q in selected)

        a = a.to(delta.dtype) if a.is_floating_point() else a
        # the per-input weight gradients of a layer applied at positions p: one batched product,
        # written in the parameter's own order (no copy of its (n, T, out, in) result)
        if _is_transposed_linear(module):  # ∂h_t/∂W[i, o] = Σ_p a_{p,i} δ_{t,p,o}
            d, x = delta.reshape(n, width, -1, delta.shape[-1]), a.reshape(n, -1, a.shape[-1])
            if wanted(module.weight):
                products = torch.matmul(x.transpose(1, 2)[:, None], d)  # (n, T, in, out)
                yield self._block(module.weight, products.reshape(n, width, -1))
            if wanted(getattr(module, "bias", None)):
                yield self._block(module.bias, d.sum(2))
        elif isinstance(module, nn.Linear):
            if a.dim() == 2 and wanted(module.weight):  # one position: factored δ ⊗ a
                yield self._block(module.weight, delta, a)
            elif wanted(module.weight):
                d, x = delta.reshape(n, width, -1, delta.shape[-1]), a.reshape(n, -1, a.shape[-1])
                products = torch.matmul(d.transpose(2, 3), x[:, None])  # (n, T, out, in)
                yield self._block(module.weight, products.reshape(n, width, -1))
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
            if "patches" not in context:
                context["patches"] = nn.functional.unfold(a, kernel, dilation=dilation, padding=padding,
                                                          stride=stride)
            patches = context["patches"]
            d = delta.reshape(n, width, delta.shape[2], -1)  # (n, T, C_out, L)
            if wanted(module.weight) and "gram" in context:  # fisher_sums: Σ_k δ_k δ_kᵀ per input
                d64 = d.to(torch.float64)
                context["gram"] += torch.einsum("ntcl,ntcm->nlmc", d64, d64)
            elif wanted(module.weight):
                products = torch.einsum("ntcl,nkl->ntck", d, patches)
                yield self._block(module.weight, products.reshape(n, width, -1))
            if wanted(module.bias):
                yield self._block(module.bias, d.sum(-1))
        elif isinstance(module, nn.Embedding):
            if wanted(module.weight):
                ids = a.reshape(n, -1)
                d = delta.reshape(n, width, ids.shape[1], -1)  # (n, T, L, dim)
                if tied is not None and tied.get(self.names[id(module.weight)], 0) > 1:
                    nothing = d.new_zeros(()).expand(n, width, module.weight.numel())
                    block = self._block(module.weight, nothing)
                    block.shared["lookup"] = (ids, d)
                    yield block
                    return
                rows = d.new_zeros(n, width, module.num_embeddings * d.shape[-1])
                _add_lookup(rows, ids, d)
                yield self._block(module.weight, rows)
        else:  # normalisations: γ ⊙ â + β
            if "normalised" not in context:
                context["normalised"] = self._normalised(module, a).to(delta.dtype)
            normalised = context["normalised"]
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
    def _combine(parts: list[ParameterDerivatives]) -> ParameterDerivatives:
        """One block per parameter: the sum of its uses (tied weights), plain layout when several,
        added into the first use's own new tensor (:meth:`_layer_derivatives`); an embedding's
        token rows (``shared["lookup"]``) are added into it row by row."""
        if len(parts) == 1 and "lookup" not in parts[0].shared:
            return parts[0]
        dense = [part.plain().first for part in parts if "lookup" not in part.shared]
        if dense:
            total = dense[0]
            for other in dense[1:]:
                total.add_(other)
        else:
            total = parts[0].first.new_zeros(parts[0].first.shape)
        for part in parts:
            if "lookup" in part.shared:
                _add_lookup(total, *part.shared["lookup"])
        zero = torch.zeros((), dtype=total.dtype, device=total.device).expand(total.shape)
        return ParameterDerivatives(parts[0].name, parts[0].shape, total, zero)


def _add_lookup(rows: torch.Tensor, ids: torch.Tensor, d: torch.Tensor) -> None:
    """Add an embedding's per-input gradient into ``rows`` ``(n, T, V·dim)``: the gradient ``d``
    ``(n, T, L, dim)`` of each position goes to the row of its token (a token used twice sums)."""
    n, width, positions, dim = d.shape
    table = rows.view(n, width, -1, dim)
    for i in range(n):
        table[i].index_add_(1, ids[i], d[i])
