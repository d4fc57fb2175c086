"""Model specs → ``nn.Module``, weights loading, and the small models of ``fimvar demo``.

Specs (``load_model(spec)``, ``fimvar analyze --model SPEC``):

- ``package.module:NAME`` or ``path/to/file.py:NAME``: ``NAME`` is a function or class called with
  the keyword arguments ``--model-arg KEY=VALUE`` (values read as Python literals), or an
  ``nn.Module`` instance used as it is. The module or file is imported, so its code runs (as with
  ``python file.py``);
- ``path/to/model.pt``: a TorchScript file (``torch.jit.save``), read without running Python code.
  TorchScript modules cannot be differentiated by ``torch.func``, so fimvar converts them to an
  equivalent ``torch.fx`` module with PyTorch's TorchScript converter (it needs an example input:
  the first data input) and checks its outputs and derivatives. A forward with data-dependent
  control flow (``if x.sum() > 0:``) becomes a ``torch.cond`` that ``torch.func`` cannot
  differentiate; such models are refused with a pointer to ``file.py:function``.

``--weights FILE`` loads a state dict (``.safetensors``, or a ``torch.save`` file read with
``weights_only=True``; a checkpoint dict with a ``state_dict``/``model_state_dict``/``model`` entry
works too) with ``strict`` matching of names and shapes.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from fimvar.analysis.inputs import check_model
from fimvar.errors import FimvarError

ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "gelu": nn.GELU,
               "silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "logsigmoid": nn.LogSigmoid}


def mlp(sizes: tuple[int, ...] | list[int] = (64, 16, 10), activation: str = "tanh",
        seed: int = 0) -> nn.Sequential:
    """A fully connected network ``sizes[0] → … → sizes[-1]`` with a linear output layer."""
    if activation not in ACTIVATIONS:
        raise FimvarError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise FimvarError(f"an MLP needs at least two positive layer sizes, got {sizes}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
    finally:
        torch.random.set_rng_state(generator_state)
    return nn.Sequential(*layers)


def digits_mlp(hidden: int = 16, activation: str = "tanh", seed: int = 0) -> nn.Sequential:
    """The demo model: 64 → ``hidden`` → 10 on scikit-learn's 8×8 digits."""
    return mlp((64, hidden, 10), activation, seed)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 150,
                     lr: float = 0.02, weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Full-batch Adam on the cross-entropy; returns the final training loss."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------------- specs
def parse_model_args(pairs: list[str] | None) -> dict[str, object]:
    """``["hidden=32", "activation=tanh"]`` → ``{"hidden": 32, "activation": "tanh"}``."""
    kwargs: dict[str, object] = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise FimvarError(f"cannot read --model-arg {pair!r}; write KEY=VALUE (e.g. hidden=32)")
        try:
            kwargs[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value
    return kwargs


def load_model(spec: str, *, weights: str | os.PathLike | None = None, kwargs: dict | None = None,
               example: torch.Tensor | None = None) -> nn.Module:
    """Build the model of ``spec`` (see the module docs), load ``weights``, set eval mode."""
    if not isinstance(spec, str) or not spec.strip():
        raise FimvarError("the model spec is empty; use package.module:function, file.py:function or "
                          "a TorchScript file")
    spec = spec.strip()
    target, colon, name = spec.rpartition(":")
    if colon and name.isidentifier() and target and not _looks_like_drive(target):
        model = _from_factory(target, name, kwargs or {})
    else:
        if kwargs:
            raise FimvarError("--model-arg applies to a factory (module:function), not to a TorchScript file")
        model = _from_torchscript(Path(spec), example, weights)
        weights = None
    if not isinstance(model, nn.Module):
        raise FimvarError(
            f"{spec} returned {_short(model)} of type {type(model).__name__}, not a torch.nn.Module; "
            "the factory must return the model"
        )
    check_model(model)  # e.g. a factory that builds the model on the meta device
    if weights is not None:
        load_weights(model, weights)
    model.eval()
    return model


def _looks_like_drive(target: str) -> bool:
    return len(target) == 1 and target.isalpha()  # C:\path on Windows


def _from_factory(target: str, name: str, kwargs: dict) -> object:
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target).expanduser()
        if not path.exists():
            raise FimvarError(f"model file not found: {path}")
        module_name = f"fimvar_user_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise FimvarError(f"cannot import {path}; the model file must be a .py file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(module_name, None)
            raise FimvarError(f"importing {path} failed: {type(error).__name__}: {error}") from error
        where = str(path)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise FimvarError(
                f"cannot import module {target!r} ({error}); check the spelling, install the package, "
                "or give a file path like path/to/model.py:function"
            ) from error
        except Exception as error:
            raise FimvarError(f"importing {target} failed: {type(error).__name__}: {error}") from error
        where = target
    if not hasattr(module, name):
        available = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise FimvarError(f"{where} has no {name!r}; available: {', '.join(available) or 'nothing callable'}")
    factory = getattr(module, name)
    if isinstance(factory, nn.Module):
        if kwargs:
            raise FimvarError(f"{where}:{name} is a module instance; it takes no --model-arg")
        return factory
    if not callable(factory):
        raise FimvarError(f"{where}:{name} is a {type(factory).__name__}, not a function returning a model")
    try:
        return factory(**kwargs)
    except FimvarError:
        raise
    except Exception as error:
        call = f"{where}:{name}({_show(kwargs)})"
        raise FimvarError(f"calling {call} failed: {type(error).__name__}: {error}") from error


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


#: what to do when a TorchScript model cannot be used
PYTHON_SPEC_HINT = ("give the model as Python code instead: --model path/to/file.py:function (a function "
                    "returning the nn.Module) and --weights FILE (its state dict, e.g. "
                    "torch.save(torch.jit.load(MODEL).state_dict(), FILE))")


def _from_torchscript(path: Path, example: torch.Tensor | None, weights=None) -> nn.Module:
    path = path.expanduser()
    if not path.exists():
        raise FimvarError(
            f"model file not found: {path} (a model spec is package.module:function, file.py:function "
            "or a TorchScript file)"
        )
    try:
        with _quiet_torch():
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise FimvarError(
            f"{path} is not a TorchScript file ({type(error).__name__}); for a state dict pass "
            "--model package.module:function --weights FILE"
        ) from error
    if weights is not None:
        load_weights(scripted, weights)
    if example is None:
        raise FimvarError("a TorchScript model needs an example input to be converted")
    return torchscript_to_module(scripted, example, name=str(path))


def torchscript_to_module(scripted: torch.jit.ScriptModule, example: torch.Tensor, *,
                          name: str = "the TorchScript model") -> nn.Module:
    """An eager ``torch.fx`` module computing the same function as ``scripted``, with the same
    parameter names, so that ``torch.func`` can differentiate it.

    Args:
        scripted: the TorchScript module.
        example: a batch of inputs (one or two are enough) to trace and check the conversion with.
        name: how error messages name the model (its file).

    Raises:
        FimvarError: when ``scripted`` fails on ``example``, when its forward has data-dependent
            control flow (which becomes a ``torch.cond`` that ``torch.func`` cannot differentiate),
            or when the conversion fails or gives a module that cannot be differentiated.
    """
    scripted.eval()
    reference = next(scripted.parameters(), None)
    if reference is not None:
        example = example.to(reference.dtype)
    try:
        with torch.no_grad():
            expected = scripted(example)
    except Exception as error:
        raise FimvarError(
            f"{name} fails on the first inputs of the data, of shape {tuple(example.shape)} "
            f"({type(error).__name__}: {_first_line(error)}); check --data and --input-shape"
        ) from error
    try:
        with _quiet_torch():
            module = _convert(scripted, example)
            flow = _control_flow(module)
            if not flow:
                with torch.no_grad():
                    if not torch.allclose(module(example), expected, rtol=1e-5, atol=1e-6):
                        raise RuntimeError("the converted module does not reproduce the TorchScript outputs")
                _try_derivatives(module, example)
    except Exception as error:
        raise FimvarError(
            f"cannot convert {name} into a module that torch.func can differentiate "
            f"({type(error).__name__}: {_first_line(error)}); {PYTHON_SPEC_HINT}"
        ) from error
    if flow:
        raise FimvarError(
            f"{name} has data-dependent control flow in its forward (an `if` or loop on tensor values, "
            f"which PyTorch's converter turns into torch.{flow}) and torch.func cannot differentiate "
            f"through it; {PYTHON_SPEC_HINT}"
        )
    return module


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence PyTorch's deprecation notices about TorchScript and its converter's internals: the
    user cannot act on them (fimvar's own warnings and errors still show)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _convert(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> torch.fx.GraphModule:
    """PyTorch's TorchScript → ``torch.export`` converter, as a plain ``GraphModule`` whose
    parameters are ``nn.Parameter`` again under their TorchScript names."""
    from torch._export.converter import TS2EPConverter

    program = TS2EPConverter(scripted, (example,)).convert()
    exported = program.module()
    graph = copy.deepcopy(exported.graph)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    module = torch.fx.GraphModule(exported, graph)
    for name, parameter in scripted.named_parameters():
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        value = getattr(owner, attribute)
        if attribute in owner._buffers:
            del owner._buffers[attribute]
        else:
            delattr(owner, attribute)
        owner.register_parameter(attribute, nn.Parameter(value.detach().clone(),
                                                          requires_grad=parameter.requires_grad))
    return module


def _control_flow(module: nn.Module) -> str | None:
    """The name of the first higher-order operator (``cond``, ``while_loop``, …) in the graphs of
    ``module`` and its submodules, or ``None``."""
    from torch._ops import HigherOrderOperator

    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function" and isinstance(node.target, HigherOrderOperator):
                return node.target.name()
    return None


def _try_derivatives(module: nn.Module, example: torch.Tensor) -> None:
    """Per-input first derivatives and one forward-over-reverse second derivative on ``example``,
    with the ``torch.func`` transforms the autodiff engine uses: a module they cannot handle fails
    here, with the conversion, rather than deep inside an analysis."""
    from torch.func import functional_call, grad, jvp, vmap

    from fimvar.engine.functional import forward_mode_ready

    forward_mode_ready()
    params = {k: v.detach() for k, v in module.named_parameters()}
    if not params:
        return
    buffers = {k: v.detach() for k, v in module.named_buffers()}

    def single(p: dict, x1: torch.Tensor) -> torch.Tensor:
        return functional_call(module, (p, buffers), (x1.unsqueeze(0),)).sum()

    vmap(grad(single), in_dims=(None, 0))(params, example[:2])
    tangent = {k: torch.ones_like(v) for k, v in params.items()}
    jvp(lambda p: grad(single)(p, example[0]), (params,), (tangent,))


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The first sentence of an exception's message, shortened: library messages can be pages long."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        # the TorchScript traceback ends with the original error, "RuntimeError: message"
        lines = [lines[-1].partition(": ")[2] or lines[-1]]
    text = (lines[0] if lines else "") or type(error).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Load a state dict into ``model`` (strict), with one clear error on any mismatch."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise FimvarError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:
            raise FimvarError(f"cannot read {path} as safetensors: {error}") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise FimvarError(
                f"cannot read {path} with torch.load(weights_only=True) ({type(error).__name__}); save "
                "the weights with torch.save(model.state_dict(), PATH) or as .safetensors"
            ) from error
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FimvarError(f"{path} does not hold a state dict (a dict of tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})" for k in expected
             if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if wrong:
            parts.append(f"wrong shape {_few(wrong)}")
        raise FimvarError(f"the weights in {path} do not match the model: {'; '.join(parts)}")
    model.load_state_dict(state)


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
