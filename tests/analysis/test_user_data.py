"""Data as users hold it: DataLoaders of 1-tuples, pairs and dicts, NumPy arrays; where the labels
come from; low-precision models; warnings at the user's line; progress; messages that never
advise a change that makes the result wrong. Fisher values are checked against autograd loops
over the classes (no fimvar code)."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fimvar
from fimvar.errors import FimvarError

HERE = str(Path(__file__).resolve())


def mlp(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def data(n: int = 12, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=generator).to(dtype), torch.randint(0, 3, (n,), generator=generator)


def autograd_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """``E_x Σ_c p(c|x) (∂ log p(c|x))²`` — or with ``y`` the empirical ``E_x (∂ log p(y|x))²`` —
    by one autograd pass per input and class, in float64."""
    model = copy.deepcopy(model).double()
    named = dict(model.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in named.items()}
    for i in range(x.shape[0]):
        logp = torch.log_softmax(model(x[i:i + 1].double())[0], -1)
        classes = range(logp.shape[0]) if y is None else [int(y[i])]
        for c in classes:
            grads = torch.autograd.grad(logp[c], list(named.values()), retain_graph=True)
            weight = logp[c].exp().detach() if y is None else 1.0
            for k, g in zip(named, grads, strict=True):
                total[k] += weight * g**2
    return {k: v / x.shape[0] for k, v in total.items()}


def assert_fisher(result, expected, rtol=1e-5):
    for name, value in expected.items():
        torch.testing.assert_close(result[name], value, rtol=rtol, atol=1e-9)


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# ---------------------------------------------------------------------- loaders
def test_a_loader_of_one_tuples_is_inputs_only():
    model, (x, _) = mlp(), data()
    r = fimvar.analyze(model, DataLoader(TensorDataset(x), batch_size=5), bounds=False)
    assert r.num_inputs == 12 and r.empirical is None and "data_labels" not in r.metadata
    assert_fisher(r.fisher, autograd_fisher(model, x))


def test_labels_given_with_a_loader_say_how_to_pass_them():
    model, (x, y) = mlp(), data()
    for loader in (DataLoader(TensorDataset(x), batch_size=5), DataLoader(TensorDataset(x, y), batch_size=5)):
        with pytest.raises(FimvarError, match=r"DataLoader\(TensorDataset\(x, y\)\)"):
            fimvar.analyze(model, loader, labels=y)
    with pytest.raises(FimvarError, match="drop labels="):  # pairs and an iterable of labels
        quiet(fimvar.analyze, model, DataLoader(TensorDataset(x, y), batch_size=5),
              labels=[y[:5], y[5:10], y[10:]])


def test_labels_carried_by_pairs_are_warned_about_and_recorded():
    model, (x, y) = mlp(), data()
    with pytest.warns(UserWarning, match="the batches carry data labels") as caught:
        r = fimvar.analyze(model, DataLoader(TensorDataset(x, y), batch_size=5), bounds=False)
    assert caught[0].filename == HERE  # the user's line, not fimvar's
    assert r.metadata["data_labels"] == "batches"
    assert any("carried data labels" in note for note in r.metadata["notes"])
    assert_fisher(r.empirical, autograd_fisher(model, x, y))
    given = fimvar.analyze(model, x, labels=y, bounds=False)
    assert given.metadata["data_labels"] == "labels=" and "notes" not in given.metadata
    plain = fimvar.analyze(model, x, bounds=False)
    assert "data_labels" not in plain.metadata


class Images(Dataset):
    """A dataset of dicts, as ``datasets``/torchvision wrappers give them."""

    def __init__(self, x, y, key="x"):
        self.x, self.y, self.key = x, y, key

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {self.key: self.x[i], "label": self.y[i]}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return self.body(x)


def test_dict_batches_give_keyword_inputs_and_their_label_entry():
    model, (x, y) = Net(), data(6)
    with pytest.warns(UserWarning, match="dict entry 'labels'"):
        r = fimvar.analyze(model, DataLoader(Images(x, y), batch_size=4), bounds=False, engine="autodiff")
    assert r.metadata["data_labels"] == "batches"
    assert_fisher(r.fisher, autograd_fisher(model, x))
    assert_fisher(r.empirical, autograd_fisher(model, x, y))
    with pytest.raises(FimvarError, match=r"'image'.*forward\(x\)"):
        fimvar.analyze(model, DataLoader(Images(x, y, key="image"), batch_size=4), engine="autodiff")


def test_numpy_inputs_and_labels():
    model, (x, y) = mlp(), data(dtype=torch.float64)
    r = fimvar.analyze(model, x.numpy(), labels=y.numpy(), bounds=False)  # float64 array, float32 model
    expected = autograd_fisher(model, x.float())
    assert_fisher(r.fisher, expected)
    assert_fisher(r.empirical, autograd_fisher(model, x.float(), y))
    batches = [x[:7].numpy(), x[7:].numpy()]  # an iterable of arrays
    assert_fisher(fimvar.analyze(model, batches, bounds=False).fisher, expected)
    net = Net()  # keyword arguments given as a dict of arrays
    r = fimvar.analyze(net, {"x": x[:4].numpy()}, bounds=False, engine="autodiff")
    assert_fisher(r.fisher, autograd_fisher(net, x[:4].float()))


# ---------------------------------------------------------------------- precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_warned_about_and_recorded(dtype):
    model, (x, _) = mlp(dtype), data(dtype=dtype)
    with pytest.warns(UserWarning, match=f"computes in {str(dtype)[6:]}") as caught:
        r = fimvar.analyze(model, x, bounds=False)
    assert caught[0].filename == HERE
    assert r.metadata["precision"] == str(dtype)[6:]
    # the derivatives are rounded to the model's precision: close to float64, not equal
    assert_fisher(r.fisher, autograd_fisher(model, x), rtol=0.1)
    converted = r.fisher_as(model)
    for name, p in model.named_parameters():
        assert converted[name].dtype == dtype and converted[name].shape == p.shape
        assert converted[name].device == p.device
        torch.testing.assert_close(converted[name].double(), r.fisher[name], rtol=1e-2, atol=1e-6)


def test_fisher_as_refuses_overflow_and_other_models():
    model, (x, _) = mlp(), data()
    r = fimvar.analyze(model, x, bounds=False)
    assert fimvar.analyze(model, x, bounds=False).metadata["precision"] == "float32"
    variance = r.fisher_as(model, "variance:i1")
    assert all(v.dtype == torch.float32 for v in variance.values())
    r.fisher = {k: v * 1e9 for k, v in r.fisher.items()}
    with pytest.raises(FimvarError, match="overflows torch.float16"):
        r.fisher_as(copy.deepcopy(model).half())
    with pytest.raises(FimvarError, match="has no parameters"):
        r.fisher_as(nn.Linear(4, 3))
    with pytest.raises(FimvarError, match="no empirical"):
        r.fisher_as(model, "empirical")


# ---------------------------------------------------------------------- messages
class Tokens(nn.Module):
    """Per-position logits (N, L, V)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x):
        return self.linear(x)


def test_no_message_advises_flattening_per_position_outputs():
    model = Tokens()
    x = torch.randn(5, 2, 3)
    with pytest.raises(FimvarError) as error:
        fimvar.analyze_full(model, x)
    message = str(error.value)
    assert "flatten the output in the model" not in message
    assert "Do not flatten" in message and "fimvar.analyze" in message
    with pytest.raises(FimvarError, match="do not flatten"):
        fimvar.Categorical().check_outputs(torch.zeros(5, 2, 4))


def test_flat_inputs_to_a_cnn_get_the_input_shape():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(FimvarError, match=r"--input-shape 1,8,8; Python: x.reshape\(len\(x\), 1, 8, 8\)"):
        fimvar.analyze(model, torch.randn(4, 64))


def test_warnings_name_the_users_line():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.warns(UserWarning, match="piecewise-linear") as caught:
        fimvar.analyze(model, data()[0], bounds=False)
    assert caught[0].filename == HERE


def test_a_first_order_analysis_does_not_warn_about_i2():
    """The piecewise-linear warning is about Î2's label variance; a first-order analysis has no Î2."""
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fimvar.analyze(model, data()[0], bounds=False, second_order=False)
    assert result.estimators == ("i1", "exact")


def test_no_torch_jit_deprecation_warning_reaches_the_user():
    """The first forward-mode derivative of a process (the autodiff engine's) imports PyTorch's
    jvp decompositions, which warn ``torch.jit.script is deprecated`` once per rule: run in a
    fresh interpreter with DeprecationWarnings as errors."""
    code = ("import warnings, torch, fimvar\n"
            "warnings.simplefilter('error', DeprecationWarning)\n"
            "m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))\n"
            "r = fimvar.analyze(m, torch.randn(3, 3), engine='autodiff', bounds=False)\n"
            "print(r.num_inputs)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "torch.jit.script" not in run.stderr and run.stdout.strip() == "3"


# ---------------------------------------------------------------------- progress
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_within_blocks(monkeypatch):
    model, (x, _) = mlp(), data(40)
    log = io.StringIO()  # a log file: not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    fimvar.analyze(model, x, bounds=False, progress=True)
    assert log.getvalue() == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    # a budget that cuts the block of 40 inputs into chunks: the bar moves within the block
    r = fimvar.analyze(model, x, bounds=False, progress=True, memory_budget="20kB")
    shown = terminal.getvalue()
    assert "chunk of inputs 1–" in shown and "parameter 4/4" in shown
    counts = {int(part.split("/")[0].split()[-1]) for part in shown.split("\r") if "/40 " in part}
    assert any(0 < count < 40 for count in counts), counts
    assert r.num_inputs == 40
