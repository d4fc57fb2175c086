"""The result of the sampled analysis (:func:`fimvar.analyze_sampled`, docs/theory.md §17): Î1
and the unbiased estimates of its two noise terms, from the draws themselves, at any number of
outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fimvar.errors import FimvarError
from fimvar.estimators.variance import joint_variance

Tensors = dict[str, torch.Tensor]


@dataclass
class SampledResult:
    """Î1 with labels sampled from the model and its variance, estimated from the draws.

    Attributes:
        family: the output family (per position for a sequence model).
        samples: label draws M per input (≥ 2).
        num_inputs: inputs N analysed.
        shapes: parameter shapes.
        i1: Î1, ``(1/(N M)) Σ_x Σ_m (ε_xm·u_x)²`` (for a sequence model the per-sequence square),
            sampled for every tensor (the output layer's too).
        v1: unbiased estimate of the label noise ``E_x v1(x)``: the within-input sample variance
            of the M squares, pooled over the inputs; for the tensors of ``metadata["exact"]``
            the exact ``E_x v1(x)`` of the analysed inputs (docs/theory.md §17.1).
        input_var: estimate of the input noise ``Var_x I(θ|x)``, ``s²_between − v1/M`` clamped
            at 0 (never farther from the truth); the unbiased value is :attr:`input_var_unbiased`.
            For the tensors of ``metadata["exact"]`` the sample variance of the exact ``I(θ|x)``
            over the analysed inputs.
        input_var_unbiased: ``s²_between − v1/M``, unbiased, possibly below 0 (exact tensors: as
            :attr:`input_var`).
        between: the sample variance over inputs of their per-input means ``(1/M) Σ_m (ε_xm·u_x)²``,
            unbiased for ``Var_x I(θ|x) + E_x v1(x)/M`` (from the draws, for every tensor).
        fisher: the exact Fisher ``(1/N) Σ_x I(θ|x)`` of the tensors computed in closed form — the
            parameters of a linear output layer (an untied language-model head), listed in
            ``metadata["exact"]`` (docs/theory.md §17.1); no entry for the others.
        metadata: run metadata (seed, outputs, engine, precision, ``exact``).
    """

    family: str
    samples: int
    num_inputs: int
    shapes: dict[str, torch.Size]
    i1: Tensors
    v1: Tensors
    input_var: Tensors
    input_var_unbiased: Tensors
    between: Tensors
    fisher: Tensors = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def variance(self, estimator: str = "i1", inputs: int | None = None,
                 draws: int | None = None) -> Tensors:
        """Estimated variance of Î1 over ``inputs`` inputs × ``draws`` draws (default this run's),
        ``(Var_x I + E_x v1 / M) / N`` ([B] Thm 4.7) with both terms estimated without bias
        (docs/theory.md §17); at this run's design it is ``between / N``. ``"exact"``: the exact
        Fisher averaged over ``inputs`` inputs (input noise only). For the tensors of
        ``metadata["exact"]`` both use the exact input and label noise (docs/theory.md §17.1),
        at every design."""
        inputs = self.num_inputs if inputs is None else int(inputs)
        draws = self.samples if draws is None else int(draws)
        if inputs < 1 or draws < 1:
            raise FimvarError("inputs and draws must be at least 1")
        if estimator not in ("i1", "exact"):
            raise FimvarError("the sampled analysis estimates the variance of 'i1' and 'exact', "
                              f"not {estimator!r}")
        own_design = estimator == "i1" and inputs == self.num_inputs and draws == self.samples
        exact = set(self.fisher)

        def label(k: str):
            return 0.0 if estimator == "exact" else self.v1[k]

        return {k: (self.between[k] / inputs if own_design and k not in exact else
                    joint_variance(v, label(k), inputs, draws).clamp_min(0.0))
                for k, v in self.input_var_unbiased.items()}

    def __repr__(self) -> str:
        return (f"SampledResult(family={self.family!r}, N={self.num_inputs}, M={self.samples}, "
                f"{len(self.shapes)} parameter tensors)")
