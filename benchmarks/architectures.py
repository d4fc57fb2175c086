"""The exact diagonal Fisher of a ResNet-18 (torchvision's architecture, written out here:
the torchvision wheel does not install next to the CPU build of torch) on 3×32×32 inputs, side by
side in one process: fimvar's graph engine, its autodiff engine and BackPACK's ``DiagGGNExact``
(``extend(..., use_converter=True)``), as ratios to one plain gradient of the same batch, with
peak memory and the largest relative difference to BackPACK.

    python benchmarks/architectures.py --threads 2 --inputs 16

The full analysis (v1, v2, c12, Î1, Î2, bounds) of such a network needs second derivatives,
which only the autodiff engine computes (T reverse passes per parameter entry): it is not run.
"""

from __future__ import annotations

import argparse
import platform
import warnings

import torch
from measure import measure
from torch import nn

import fimvar


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inputs != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inputs = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(inputs, planes, stride), BasicBlock(planes, planes)))
            inputs = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--autodiff-inputs", type=int, default=2,
                        help="inputs for the autodiff engine (its time is scaled to --inputs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = ResNet18().eval()
    x = torch.randn(args.inputs, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (args.inputs,), generator=torch.Generator().manual_seed(2))
    cpu = torch.device("cpu")

    def gradient():
        model.zero_grad()
        nn.functional.cross_entropy(model(x), labels, reduction="sum").backward()

    results = {"gradient": measure(gradient, device=cpu, repeats=3)}
    found = {}

    def graph():
        found["fimvar"] = fimvar.fisher_diagonal(model, x, "categorical", engine="graph")

    results["fimvar fisher_diagonal (graph engine)"] = measure(graph, device=cpu, repeats=1, time_limit=600)
    few = x[:args.autodiff_inputs]
    autodiff = measure(lambda: fimvar.fisher_diagonal(model, few, "categorical", engine="autodiff"),
                       device=cpu, repeats=1, time_limit=600)
    if autodiff.seconds is not None:
        autodiff.seconds *= args.inputs / args.autodiff_inputs
    name = f"fimvar fisher_diagonal (autodiff engine; {args.autodiff_inputs} inputs, time scaled)"
    results[name] = autodiff
    agreement = "BackPACK not installed"
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact

        extended = extend(ResNet18().eval(), use_converter=True)
        extended.load_state_dict(model.state_dict())
        loss = extend(nn.CrossEntropyLoss(reduction="sum"))

        def backpack_run():
            extended.zero_grad()
            with backpack(DiagGGNExact()):
                loss(extended(x), labels).backward()

        results["BackPACK DiagGGNExact (use_converter)"] = measure(backpack_run, device=cpu, repeats=1,
                                                                  time_limit=600)
        theirs = {name: p.diag_ggn_exact / args.inputs for name, p in extended.named_parameters()}
        ours = found["fimvar"]
        errors = [float((ours[name] - other).abs().max() / other.abs().max())
                  for name, other in theirs.items()]
        agreement = (f"largest relative difference to BackPACK, over the {len(errors)} parameter tensors: "
                     f"{max(errors):.1e}")
    except ImportError:
        pass
    unit = results["gradient"].seconds
    print(f"ResNet-18, 3×32×32, N = {args.inputs}, float32, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}\n")
    print("| method | time | × gradient | peak memory |")
    print("|---|---|---|---|")
    for name, m in results.items():
        seconds = "—" if m.seconds is None else f"{m.seconds:.2f} s"
        ratio = "—" if m.seconds is None else f"{m.seconds / unit:.0f}×"
        peak = "—" if m.peak_bytes is None else f"{m.peak_bytes / 2**20:.0f} MiB"
        print(f"| {name} | {seconds} | {ratio} | {peak} |" + ("" if m.status == "ok" else f" {m.status}"))
    print(f"\n{agreement}")


if __name__ == "__main__":
    main()
