"""Expectations and variances of the "Fisher" estimators people use in practice
(docs/theory.md §15): EWC's squared batch-mean gradient, Sophia's Gauss–Newton–Bartlett (GNB)
estimator, the empirical Fisher, Hutchinson's Hessian diagonal at sampled labels (whose probe
term takes the per-input Jacobians and output Hessians, :func:`hutchinson_probe_terms`), and the
sample sizes any of them needs for a target.

Every function takes per-parameter sums over the ``N`` analysed inputs (tensors, elementwise, or
floats) — the per-sample quantities the engines already produce:

- ``g_i``: the gradient of the negative log-likelihood of input ``i`` with its *data* label
  (``g_i = −(t(ŷ_i) − η_i)·u_i``); summarised by its mean ``μ`` and the centred power sums
  ``P_k = Σ_i (g_i − μ)^k`` (k = 2, 3, 4);
- ``F_i = u_iᵀ I u_i`` (per-input Fisher) and ``v1_i = Var[(u_i·ε)²]`` (docs/theory.md §3.1);
  summarised by ``ΣF_i``, ``ΣF_i²``, ``Σv1_i``.

Two designs of a batch estimator with batch size ``B`` (docs/theory.md §15.1):

- *one pass* (``shuffle``): the ``N`` inputs, ``N = K B``, shuffled uniformly at random and cut
  into ``K`` batches; expectation and variance over the shuffle (and the sampled labels), the
  inputs fixed (a finite population);
- *independent batches*: each of ``K`` batches holds ``B`` inputs drawn independently (with
  replacement) from the data, here the ``N`` inputs as the data distribution.

Chunks of inputs are merged with the pairwise updates of Pébay (2008) for the centred power
sums up to the fourth (:func:`merge_central_moments`), free of cancellation.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from fimvar.errors import FimvarError
from fimvar.estimators.design import Target, confidence_factor
from fimvar.estimators.moments import sample_variance

Number = torch.Tensor | float


# ---------------------------------------------------------------------------------- streaming
def central_moments(values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(Σ g, P2, P3, P4)`` over the first axis of ``values`` (two passes: the mean first)."""
    total = values.sum(0)
    centred = values - total / values.shape[0]
    square = centred * centred
    return total, square.sum(0), (square * centred).sum(0), (square * square).sum(0)


def merge_central_moments(count: int, moments: tuple[torch.Tensor, ...] | None, chunk_count: int,
                          chunk: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Merge a chunk's ``(Σ g, P2, P3, P4)`` into the running ones (Pébay 2008, eq. 3.1 and
    its third/fourth-order analogues): with ``δ = mean_b − mean_a``, ``n = n_a + n_b``,

        P2 = P2a + P2b + δ² n_a n_b / n
        P3 = P3a + P3b + δ³ n_a n_b (n_a − n_b)/n² + 3δ (n_a P2b − n_b P2a)/n
        P4 = P4a + P4b + δ⁴ n_a n_b (n_a² − n_a n_b + n_b²)/n³ + 6δ² (n_a² P2b + n_b² P2a)/n²
             + 4δ (n_a P3b − n_b P3a)/n
    """
    if moments is None or count == 0:
        return tuple(t.clone() for t in chunk)
    total_a, p2a, p3a, p4a = moments
    total_b, p2b, p3b, p4b = chunk
    na, nb = float(count), float(chunk_count)
    n = na + nb
    delta = total_b / nb - total_a / na
    p2 = p2a + p2b + delta**2 * (na * nb / n)
    p3 = (p3a + p3b + delta**3 * (na * nb * (na - nb) / n**2)
          + 3 * delta * (na * p2b - nb * p2a) / n)
    p4 = (p4a + p4b + delta**4 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
          + 6 * delta**2 * (na * na * p2b + nb * nb * p2a) / n**2 + 4 * delta * (na * p3b - nb * p3a) / n)
    return total_a + total_b, p2, p3, p4


# ---------------------------------------------------------------------------------- partitions
def same_batch_probabilities(inputs: int, batch_size: int) -> tuple[Fraction, Fraction, Fraction]:
    """Exact probabilities for a uniformly random partition of ``N`` inputs into batches of
    ``B`` (docs/theory.md §15.1): ``q2`` that two given inputs share a batch, ``q3`` that three
    do, and ``q22`` that two given disjoint pairs each share a batch (the same or two different
    ones)::

        q2  = (B−1)/(N−1)
        q3  = (B−1)(B−2) / ((N−1)(N−2))
        q22 = q2 · [(B−2)(B−3) + (N−B)(B−1)] / ((N−2)(N−3))

    (0 where the inputs are too few for the event to be defined.)"""
    n, b = inputs, batch_size
    q2 = Fraction(b - 1, n - 1) if n > 1 else Fraction(0)
    q3 = Fraction((b - 1) * (b - 2), (n - 1) * (n - 2)) if n > 2 else Fraction(0)
    q22 = q2 * Fraction((b - 2) * (b - 3) + (n - b) * (b - 1), (n - 2) * (n - 3)) if n > 3 else Fraction(0)
    return q2, q3, q22


def check_partition(inputs: int, batch_size: int) -> None:
    """Raise unless ``B ≥ 1`` divides ``N`` (the one-pass design)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FimvarError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if inputs % batch_size:
        divisors = [d for d in range(1, inputs + 1) if inputs % d == 0 and d <= max(1, batch_size * 2)]
        raise FimvarError(
            f"{inputs} inputs cannot be cut into batches of {batch_size}: one pass over a shuffled "
            f"data set needs N divisible by batch_size; give batch_size dividing {inputs} "
            f"(e.g. {divisors[-1]}) or drop {inputs % batch_size} inputs")


# ---------------------------------------------------------------------------------- EWC
def ewc_mean(mean: Number, p2: Number, inputs: int, batch_size: int) -> Number:
    """Expectation over the shuffle of EWC's one-pass estimator ``(1/K) Σ_b ḡ_b²`` (ḡ_b the
    gradient of batch b's mean loss with the data labels): ``μ² + σ² (N−B)/(B(N−1))`` with
    ``σ² = P2/N`` (docs/theory.md §15.2; Kirkpatrick et al. 2017, as implemented by Avalanche's
    ``EWCPlugin``). ``B = 1``: the empirical Fisher; ``B = N``: the squared full gradient μ²."""
    if inputs < 2:
        return mean * mean
    return mean * mean + p2 / inputs * ((inputs - batch_size) / (batch_size * (inputs - 1)))


def ewc_variance(p2: Number, p4: Number, inputs: int, batch_size: int) -> Number:
    """Variance over the shuffle of EWC's one-pass estimator (docs/theory.md §15.2)::

        Var = [P2² (2q2 − 4q3 + 3q22 − q2²) + P4 (−2q2 + 8q3 − 6q22)] / (N² B²)

    with the centred power sums ``P_k = Σ (g_i − μ)^k`` and the exact same-batch probabilities of
    :func:`same_batch_probabilities` (coefficients in exact rational arithmetic; the estimator is
    ``μ² + Σ_b d̄_b²/K`` with ``d = g − μ``, so only the centred values enter). Never negative."""
    q2, q3, q22 = same_batch_probabilities(inputs, batch_size)
    first = float(2 * q2 - 4 * q3 + 3 * q22 - q2 * q2)
    second = float(-2 * q2 + 8 * q3 - 6 * q22)
    scale = float(inputs * batch_size) ** 2
    value = (p2 * p2 * first + p4 * second) / scale
    return value.clamp_min(0.0) if isinstance(value, torch.Tensor) else max(value, 0.0)


def ewc_mean_independent(mean: Number, p2: Number, inputs: int, batch_size: int) -> Number:
    """Expectation of ``ḡ_b²`` for a batch of ``B`` inputs drawn independently from the data:
    ``EF/B + (1 − 1/B) μ² = μ² + σ²/B`` (docs/theory.md §15.2)."""
    return mean * mean + p2 / (inputs * batch_size)


def ewc_variance_independent(mean: Number, p2: Number, p3: Number, p4: Number, inputs: int,
                             batch_size: int, batches: int) -> Number:
    """Variance of the average of ``ḡ_b²`` over ``K`` independent batches of ``B`` inputs drawn
    with replacement from the data (docs/theory.md §15.2): with ``σ² = P2/N``, ``m3 = P3/N``,
    ``m4 = P4/N``,

        Var ḡ² = 4μ²σ²/B + 4μ m3/B² + (m4 + 3(B−1)σ⁴)/B³ − σ⁴/B²,   divided by K."""
    b = float(batch_size)
    s2, m3, m4 = p2 / inputs, p3 / inputs, p4 / inputs
    value = (4 * mean * mean * s2 / b + 4 * mean * m3 / b**2 + (m4 + 3 * (b - 1) * s2 * s2) / b**3
             - s2 * s2 / b**2) / batches
    return value.clamp_min(0.0) if isinstance(value, torch.Tensor) else max(value, 0.0)


# ---------------------------------------------------------------------------------- GNB
def gnb_variance(fisher_sum: Number, fisher_sq_sum: Number, v1_sum: Number, inputs: int,
                 batch_size: int) -> Number:
    """Variance over the sampled labels and the shuffle of Sophia's GNB estimator over one pass,
    ``(1/K) Σ_b B ĝ_b²`` with ``ĝ_b`` the batch-mean gradient for one label per input sampled from
    the model (docs/theory.md §15.3; Liu et al. 2023, *Sophia*, Alg. 2)::

        Var = [Σ v1_i + 2 q2 ((Σ F_i)² − Σ F_i²)] / N²,     q2 = (B−1)/(N−1).

    Its expectation is the Fisher ``ΣF_i/N`` itself (unbiased, for every partition)."""
    q2 = float(same_batch_probabilities(inputs, batch_size)[0])
    value = (v1_sum + 2 * q2 * (fisher_sum * fisher_sum - fisher_sq_sum)) / float(inputs) ** 2
    return value.clamp_min(0.0) if isinstance(value, torch.Tensor) else max(value, 0.0)


def gnb_variance_independent(fisher_sum: Number, fisher_sq_sum: Number, v1_sum: Number,
                             inputs: int, batch_size: int, batches: int) -> Number:
    """Variance of GNB over ``K`` independent batches of ``B`` inputs drawn with replacement from
    the data, one sampled label each (docs/theory.md §15.3): with ``s = u·ε`` (``E s = 0``,
    ``E s² = F̄``, ``E s⁴ = (Σ v1_i + Σ F_i²)/N``),

        Var(B ĝ²) = E s⁴ / B + (2 − 3/B) F̄²,   divided by K."""
    b = float(batch_size)
    mean = fisher_sum / inputs
    fourth = (v1_sum + fisher_sq_sum) / inputs
    value = (fourth / b + (2 - 3 / b) * mean * mean) / batches
    return value.clamp_min(0.0) if isinstance(value, torch.Tensor) else max(value, 0.0)


# ---------------------------------------------------------------------------------- empirical
def empirical_variance(squares_m2: Number, inputs: int) -> Number:
    """Variance of the empirical Fisher ``(1/N) Σ g_i²`` (Kunstner et al. 2019; [B] §6) over the
    N inputs as a sample of the data: ``(1/N) Var_i(g_i²)``, with the unbiased variance
    ``Σ (g_i² − EF)² / (N − 1)`` (0 for one input; docs/theory.md §15.4)."""
    return sample_variance(inputs, squares_m2) / inputs


# ---------------------------------------------------------------------------------- sample size
def required_inputs(unit_variance: float, bias_norm: float, fisher_norm: float, target: Target,
                    method: str) -> float:
    """Inputs ``n`` an estimator with ``Σ Var = a/n`` and a fixed bias ``b`` needs for
    ``‖Î − I‖ ≤ ρ‖I‖`` with probability ``≥ 1 − δ`` (docs/theory.md §15.5)::

        n ≥ k a / (ρ‖I‖ − ‖b‖)²,    k = 1/δ (Chebyshev) or z²_{1−δ/2} (normal),

    from ``‖Î − I‖ ≤ ‖Î − EÎ‖ + ‖b‖`` and the bounds of docs/theory.md §8.2 on ``‖Î − EÎ‖``.
    ``inf`` when the bias alone exceeds the target (``‖b‖ ≥ ρ‖I‖``) or ``‖I‖ = 0``; 0 when ``a = 0``
    and the bias is within the target."""
    margin = target.rho * fisher_norm - bias_norm
    if not (fisher_norm > 0 and margin > 0 and math.isfinite(unit_variance)):
        return math.inf
    if unit_variance <= 0:
        return 0.0
    value = confidence_factor(target.delta, method) * unit_variance / (margin * margin)
    return value if math.isfinite(value) else math.inf


# ---------------------------------------------------------------------------------- Hutchinson
def hutchinson_probe_terms(jacobian: torch.Tensor, hessians: torch.Tensor, fisher: torch.Tensor
                           ) -> torch.Tensor:
    """Per input and parameter, the probe term of Hutchinson's estimate of the Hessian diagonal
    of the loss at a label sampled from the model (docs/theory.md §15.7)::

        Q_i(x) = E_y Σ_{j≠i} H_ij(y)² = Σ_{j≠i} [ G_ij² + (∂²_ij h)ᵀ I (∂²_ij h) ],    G = Jᵀ I J,

    with ``H(y) = ∇²_θ(−log p(y|x)) = G − Σ_t ε_t ∇²_θ h_t`` (the cross term vanishes, ``E ε = 0``)
    and ``j`` over every analysed parameter (the probe's support). One Rademacher probe ``z`` gives
    ``Var(z_i (H z)_i | y) = Σ_{j≠i} H_ij²`` (Hutchinson 1989).

    Args:
        jacobian: ``J = ∂h/∂θ`` per input, ``(n, T, P)``.
        hessians: ``∇²_θ h_t`` per input and output, ``(n, T, P, P)``.
        fisher: ``I(h)`` per input, ``(n, T, T)``.

    Returns:
        ``Q`` of shape ``(n, P)``, float64, never negative (each term a square or a quadratic form
        in the positive semi-definite ``I``; the diagonal ``j = i`` is excluded, not subtracted).
    """
    jacobian, hessians, fisher = (t.to(torch.float64) for t in (jacobian, hessians, fisher))
    gauss_newton = torch.einsum("nai,nab,nbj->nij", jacobian, fisher, jacobian)
    curvature = torch.einsum("naij,nab,nbij->nij", hessians, fisher, hessians).clamp_min(0.0)
    total = gauss_newton * gauss_newton + curvature
    total.diagonal(dim1=1, dim2=2).zero_()
    return total.sum(-1)


def hutchinson_label_variance(v2: Number, probe: Number, probes: int) -> Number:
    """Variance of one label's Hutchinson estimate ``(1/k) Σ_r z_r ⊙ H(y) z_r`` (``k`` Rademacher
    probes, ``y`` sampled from the model) given the input (docs/theory.md §15.7)::

        Var(ĥ_i | x) = Var_y H_ii(y) + E_y Σ_{j≠i} H_ij(y)² / k = v2_i + Q_i / k,

    ``v2 = wᵀ I w`` (docs/theory.md §3.1) and ``Q`` of :func:`hutchinson_probe_terms` (averaged
    over the inputs, it enters docs/theory.md §3.3 as the label variance of M labels per input)."""
    return v2 + probe / probes
