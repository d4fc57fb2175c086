"""What a user's forward needs so that ``torch.func`` can differentiate it (docs/theory.md §10).

Some of PyTorch's fused kernels have no forward-mode derivative or write into their outputs in
place, which ``vmap`` refuses. While fimvar differentiates a model (:func:`differentiable`):

- ``F.scaled_dot_product_attention`` (``nn.MultiheadAttention``, ``transformers`` attention) runs
  on PyTorch's math kernel, the same attention in plain operations;
- ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells run unrolled (:mod:`fimvar.engine.recurrent`);
- ``nn.EmbeddingBag`` runs as an embedding lookup followed by its reduction.

The replaced forwards compute the same function of the same parameters (the tests compare them
with the fused ones) and are restored on exit.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn

from fimvar.engine import recurrent
from fimvar.errors import FimvarError


def embedding_bag_forward(self: nn.EmbeddingBag, input: torch.Tensor, offsets=None,
                          per_sample_weights=None) -> torch.Tensor:
    """``nn.EmbeddingBag`` on 2-d inputs (one bag per row): the rows' embeddings, weighted by
    ``per_sample_weights`` (mode ``sum``), reduced by sum, mean or max; ``padding_idx`` entries
    are left out (an empty bag gives zeros)."""
    if offsets is not None or input.dim() != 2:
        raise FimvarError("fimvar differentiates nn.EmbeddingBag on 2-d inputs (one bag per row, no "
                          "offsets); pad the bags to one length and give padding_idx")
    vectors = nn.functional.embedding(input, self.weight, max_norm=self.max_norm,
                                      norm_type=self.norm_type, sparse=False)
    keep = torch.ones_like(input, dtype=vectors.dtype)
    if self.padding_idx is not None:
        keep = (input != self.padding_idx).to(vectors.dtype)
    if per_sample_weights is not None:
        vectors = vectors * per_sample_weights[..., None]
    if self.mode == "max":
        masked = torch.where(keep[..., None] > 0, vectors, torch.full_like(vectors, -torch.inf))
        out = masked.amax(1)
        return torch.where(keep.sum(1, keepdim=True) > 0, out, torch.zeros_like(out))
    total = (vectors * keep[..., None]).sum(1)
    if self.mode == "sum":
        return total
    return total / keep.sum(1, keepdim=True).clamp_min(1)


def _replacement(module: nn.Module):
    if isinstance(module, nn.RNNCellBase):
        return recurrent.cell_forward
    if isinstance(module, nn.RNNBase):
        return recurrent.layer_forward
    if isinstance(module, nn.EmbeddingBag):
        return embedding_bag_forward
    return None


@contextlib.contextmanager
def _replaced_forwards(model: nn.Module) -> Iterator[None]:
    replaced = []
    for module in model.modules():
        forward = _replacement(module)
        if forward is not None and "forward" not in vars(module):
            module.forward = types.MethodType(forward, module)
            replaced.append(module)
    try:
        yield
    finally:
        for module in replaced:
            del module.forward


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """The model's buffers are restored on exit (a forward that counts its calls, say): analysing a
    model leaves its state untouched."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def module_output_sizes(model: nn.Module, x: torch.Tensor, modules) -> dict[nn.Module, int]:
    """One forward pass of the first input without gradients, with hooks on ``modules``: the
    number of tensor elements each module that was called returned (summed over its calls); the
    model's buffers are kept."""
    sizes: dict[nn.Module, int] = {}

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes[module] = sizes.get(module, 0) + output.numel()

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad(), buffers_kept(model):
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _math_attention() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the fused kernels are chosen by the older switch
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False,
                                              enable_math=True)
    return sdpa_kernel([SDPBackend.MATH])


def output_tensor(output) -> torch.Tensor:
    """The family outputs of a model's return value: a tensor as it is, or the ``logits`` of a
    ``transformers`` model output (an object or a dict with ``logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise FimvarError(
        f"the model must return a tensor (or an object with .logits, such as a transformers model "
        f"output), got {type(output).__name__}; wrap the model so that its forward returns the "
        "outputs the family's natural parameters are")


@contextlib.contextmanager
def differentiable(model: nn.Module) -> Iterator[None]:
    """Within the context, ``model``'s forward uses only operations ``torch.func`` differentiates
    in both modes (the model's parameters and results are unchanged)."""
    forward_mode_ready()
    with _math_attention(), _replaced_forwards(model):
        yield


def forward_mode_ready() -> None:
    """Load PyTorch's forward-mode decompositions now, without their deprecation warnings.

    The first forward-mode derivative (``torch.func.jvp``, ``jacfwd``) imports
    ``torch._decomp.decompositions_for_jvp``, which registers its rules with ``torch.jit.script``
    and so warns ``torch.jit.script is deprecated`` once per rule (18 times with torch 2.13): a
    warning about PyTorch's internals that its user can do nothing about. This import, with
    that one warning ignored, happens once; every other warning is left as it is.
    """
    import sys
    import warnings

    if "torch._decomp.decompositions_for_jvp" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=DeprecationWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - a torch without these internals
            pass
