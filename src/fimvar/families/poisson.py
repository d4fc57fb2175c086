"""Poisson outputs: ``h`` is the log-rate, ``λ = exp(h)``, ``ε = y − λ``."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ndtri, pdtr

from fimvar.errors import FimvarError
from fimvar.families.independent import IndependentFamily

#: counts up to 2**53 are exact float64 integers; a rate of at most 2**52 keeps every count the
#: sampler can return (λ + 8.3 √λ at the largest uniform below 1, with margin) below that
MAX_RATE = 2.0**52
#: the largest log-rate fimvar accepts, log(2**52) ≈ 36.04: beyond it not every count of the
#: distribution is a float64 integer (and the fourth moment λ + 2λ² soon overflows, near h ≈ 354)
MAX_LOG_RATE = math.log(MAX_RATE)


#: from this rate on, the tails beyond TAIL_Z standard deviations come from :func:`poisson_tail`:
#: scipy's pdtr loses all accuracy in the upper tail beyond 4.5 standard deviations for rates of
#: 10⁶ and more (its series there stops before converging)
QUADRATURE_RATE = 1e4
TAIL_Z = 4.0
#: Gauss–Laguerre rule of :func:`poisson_tail`
_NODES, _WEIGHTS = np.polynomial.laguerre.laggauss(40)


def _series(x: np.ndarray, alternating: bool, denominator, terms: int = 32) -> np.ndarray:
    """``Σ_{n ≥ 2} (±1)ⁿ xⁿ / denominator(n)`` for ``|x| ≤ 0.4`` (Horner's rule, 32 terms:
    the remainder is below 1e-16 of the sum)."""
    total = np.zeros_like(x)
    for n in range(terms + 1, 1, -1):
        sign = -1.0 if alternating and n % 2 else 1.0
        total = total * x + sign / denominator(n)
    return total * x * x


def poisson_tail(k: np.ndarray, rate: np.ndarray, upper: bool) -> np.ndarray:
    """``P(Y > k)`` (``upper``) or ``P(Y ≤ k)`` of ``Y ~ Poisson(λ)`` to about 1e-14 relative
    accuracy, for ``λ ≥ QUADRATURE_RATE`` and ``|k − λ| ≥ TAIL_Z √λ`` (k beyond λ when ``upper``,
    below it otherwise).

    With ``d = |k − λ|`` and the Gamma integrals ``P(Y > k) = ∫_0^λ tᵏ e^{−t}/k! dt``,
    ``P(Y ≤ k) = ∫_λ^∞ tᵏ e^{−t}/k! dt``, the substitution ``t = λ ∓ (λ/d) v`` gives

        P(Y = k) · (λ/d) · ∫_0^∞ e^{−v} exp(−k·g(v/d)) dv,
        g(w) = −log(1 − w) − w (upper),  w − log(1 + w) (lower),

    whose smooth factor ``exp(−k g) ≈ exp(−v²/2z²)`` a 40-point Gauss–Laguerre rule integrates to
    rounding error for ``z ≥ 4``; ``P(Y = k)`` is Loader's saddle-point form
    ``exp(−λ·((1+t)log(1+t) − t) − stirlerr(k)) / √(2πk)``, ``t = (k − λ)/λ``, each piece by a
    series that never cancels.
    """
    k, lam = np.broadcast_arrays(np.asarray(k, dtype=np.float64), np.asarray(rate, dtype=np.float64))
    t = (k - lam) / lam  # |t| ≤ 0.3 where it is used
    deviance = lam * _series(t, alternating=True, denominator=lambda n: n * (n - 1))
    stirling = 1.0 / (12.0 * k) - 1.0 / (360.0 * k**3) + 1.0 / (1260.0 * k**5)
    mass = np.exp(-deviance - stirling) / np.sqrt(2.0 * np.pi * k)
    gap = np.abs(k - lam).reshape(-1)
    counts = k.reshape(-1)
    integral = np.empty(gap.shape)
    for start in range(0, gap.size, 1 << 15):  # bounded temporaries: 40 nodes × 32768 values
        part = slice(start, start + (1 << 15))
        w = _NODES[:, None] / gap[None, part]  # ≤ 140 / (4√λ) ≤ 0.35
        smooth = np.exp(-counts[None, part] * _series(w, alternating=not upper, denominator=lambda n: n))
        integral[part] = _WEIGHTS @ smooth
    return mass * (lam / np.abs(k - lam)) * integral.reshape(k.shape)


def _reaches(k: np.ndarray, rate: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``P(Y ≤ k) ≥ u`` elementwise, for counts ``k ≥ 0``."""
    z = (k - rate) / np.sqrt(np.maximum(rate, 1e-300))
    near = (rate >= QUADRATURE_RATE) & (np.abs(k - rate) <= 0.3 * rate)  # beyond: F is 0 or 1
    upper = near & (z >= TAIL_Z)
    lower = near & (z <= -TAIL_Z)
    middle = ~(upper | lower)
    out = np.empty(k.shape, dtype=bool)
    out[middle] = pdtr(k[middle], rate[middle]) >= u[middle]
    # upper tail: F(k) ≥ u ⟺ P(Y > k) ≤ 1 − u (exact for u ≥ 1/2, which holds there)
    out[upper] = poisson_tail(k[upper], rate[upper], upper=True) <= 1.0 - u[upper]
    out[lower] = poisson_tail(k[lower], rate[lower], upper=False) >= u[lower]
    return out


def poisson_quantile(uniforms: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """The Poisson quantile ``min{k ≥ 0 : P(Y ≤ k) ≥ u}`` for uniforms ``u ∈ (0, 1)`` and rates
    ``0 ≤ λ ≤ MAX_RATE`` (float64 arrays that broadcast), exact up to the rounding of the CDF:
    ``scipy.special.pdtr`` (the regularised incomplete gamma function) within 4 standard
    deviations or below rate 10⁴, :func:`poisson_tail` beyond.

    A Cornish–Fisher guess ``λ + z√λ + (z² − 1)/6`` (``z = Φ⁻¹(u)``) is bracketed by steps that
    double from 1, then the bracket ``F(lo) < u ≤ F(hi)`` is halved down to one count: a handful
    of vectorised CDF evaluations per draw, whatever the rate.
    """
    u, lam = np.broadcast_arrays(np.asarray(uniforms, dtype=np.float64),
                                 np.asarray(rate, dtype=np.float64))
    if not ((u > 0) & (u < 1)).all():
        raise FimvarError("Poisson draws need uniform numbers strictly between 0 and 1")
    if not ((lam >= 0) & (lam <= MAX_RATE)).all():
        raise FimvarError(f"Poisson rates must lie between 0 and 2**52 ≈ {MAX_RATE:.3g} (log-rate "
                          f"{MAX_LOG_RATE:.4f}) for exact draws")

    def reaches(k: np.ndarray, where: np.ndarray) -> np.ndarray:
        """``F(k) ≥ u`` at the entries ``where``, False elsewhere (``k ≥ 0`` there)."""
        out = np.zeros(u.shape, dtype=bool)
        out[where] = _reaches(k[where], lam[where], u[where])
        return out

    z = ndtri(u)
    guess = np.clip(np.floor(lam + np.sqrt(lam) * z + (z * z - 1.0) / 6.0), 0.0, None)
    above = reaches(guess, np.ones(u.shape, dtype=bool))
    # the bracket: F(lo) < u ≤ F(hi), with lo = −1 standing for F(−1) = 0
    lo = np.where(above, -1.0, guess)
    hi = np.where(above, guess, guess + 1.0)
    step = np.ones(u.shape)
    seek_low = above.copy()  # hi is known: step down until F < u (or below 0)
    seek_high = ~above  # lo is known: step up until F ≥ u
    while seek_low.any() or seek_high.any():
        below = np.where(seek_low, hi - step, -1.0)
        seek_low &= below >= 0
        still = reaches(below, seek_low)
        lo = np.where(seek_low & ~still, below, lo)
        hi = np.where(still, below, hi)
        seek_low = still
        beyond = np.where(seek_high, lo + step, hi)
        found = reaches(beyond, seek_high)
        hi = np.where(found, beyond, hi)
        lo = np.where(seek_high & ~found, beyond, lo)
        seek_high &= ~found
        step = step * 2.0
    # halve the bracket until it holds one count (integers below 2**53 are exact here)
    while True:
        wide = hi - lo > 1.0
        if not wide.any():
            return hi
        mid = lo + np.floor((hi - lo) / 2.0)
        at_mid = reaches(mid, wide)
        hi = np.where(at_mid, mid, hi)
        lo = np.where(wide & ~at_mid, mid, lo)


class Poisson(IndependentFamily):
    """Count regression. Per component ``s = κ3 = λ`` and ``Var(ε²) = λ + 2λ²``.

    Log-rates above :data:`MAX_LOG_RATE` (≈ 36.04, rates above 2⁵²) are refused: there float64
    cannot hold every count exactly, so the label draws, and the moments soon after, would be
    wrong.
    """

    name = "poisson"

    def check_outputs(self, h: torch.Tensor) -> None:
        super().check_outputs(h)
        largest = float(h.max()) if h.numel() else -math.inf
        if largest > MAX_LOG_RATE:
            raise FimvarError(
                f"the model returns a Poisson log-rate of {largest:.4g}, above the largest fimvar "
                f"supports, log(2**52) ≈ {MAX_LOG_RATE:.4f} (rate {MAX_RATE:.3g}): beyond it float64 "
                "cannot represent every count (nor, from about 354, the fourth moment λ + 2λ²); "
                "rescale the model's last layer or its inputs so that the rates stay below 2**52"
            )

    def check_labels(self, labels: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        labels = self.check_real_labels(labels, h)
        if (labels < 0).any() or (labels != labels.round()).any():
            raise FimvarError("poisson labels must be non-negative integer counts")
        return labels

    def uniform_width(self, width: int) -> int:
        return width

    def sample(self, h: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        # exact inverse-CDF sampling, so that draws depend only on the uniforms
        self.check_outputs(h)
        rate = torch.exp(h)[:, None, :].expand_as(uniforms)
        counts = poisson_quantile(uniforms.detach().cpu().numpy(), rate.detach().cpu().numpy())
        return torch.as_tensor(counts, dtype=torch.float64, device=h.device)

    def statistic(self, labels: torch.Tensor, width: int) -> torch.Tensor:
        return labels.to(torch.float64)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(h)

    def component_moments(self, h: torch.Tensor):
        rate = torch.exp(h)
        return rate, rate, rate + 2 * rate**2
