"""Label draws: counter-based random numbers and the labels sampled from the model (docs/theory.md §11).

Draw ``m`` of input number ``n`` (counted over the whole data stream) always receives the same
uniform numbers for a given seed, whatever the batching, the chunking, the engine or the device.
This is what makes two engines agree on the sampled estimators Î1/Î2 to rounding error, and what
makes a resumed run identical to an uninterrupted one.

The generator is a 32-bit integer avalanche hash (Wellons' "lowbias32" constants) applied to a
mix of (seed, input index, draw index, component); two hashes give one 53-bit uniform.
"""

from __future__ import annotations

import math
import numbers

import torch

from fimvar.errors import FimvarError
from fimvar.families import ExponentialFamily, get_family
from fimvar.families.positions import Positions

_MASK32 = 0xFFFFFFFF
#: seeds are 64-bit: 0 ≤ seed < SEED_LIMIT (larger seeds would alias smaller ones)
SEED_LIMIT = 2**64


def check_seed(seed: int) -> int:
    """The seed of the label draws as a Python int: an integer with ``0 ≤ seed < 2**64`` (a Python
    or NumPy integer, not a bool); the generator mixes exactly these 64 bits."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < SEED_LIMIT:
        raise FimvarError(f"seed must be an integer with 0 ≤ seed < 2**64, got {seed!r}")
    return int(seed)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche hash of 32-bit values held in int64 (products wrap mod 2^64; the low 32 bits
    are those of the 32-bit product)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return x


def uniforms(
    seed: int, sample_index: torch.Tensor, draws: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Uniform numbers in (0, 1), float64, of shape ``(n, draws, width)``.

    Args:
        seed: the user's seed.
        sample_index: global indices of the inputs, shape ``(n,)``.
        draws: number of label draws M per input.
        width: uniforms needed per draw (family dependent).
    """
    sample_index = sample_index.to(device=device, dtype=torch.int64)
    draw = torch.arange(draws, device=device, dtype=torch.int64)
    comp = torch.arange(width, device=device, dtype=torch.int64)
    seed_hash = _hash32(torch.tensor(seed & _MASK32, dtype=torch.int64, device=device) ^ 0x5BD1E995)
    seed_hash = _hash32(seed_hash ^ ((seed >> 32) & _MASK32))
    key = _hash32(seed_hash ^ _hash32(sample_index & _MASK32) ^ _hash32((sample_index >> 32) + 0x9E37))
    key = key[:, None, None]
    cell = _hash32(key ^ _hash32(draw[None, :, None] * 0x10001 + 0x68E31DA4))
    cell = _hash32(cell ^ _hash32(comp[None, None, :] * 2 + 0x1B873593))
    hi = _hash32(cell ^ 0x27D4EB2F) >> 5  # 27 bits
    lo = _hash32(cell ^ 0x165667B1) >> 6  # 26 bits
    value = (hi.to(torch.float64) * 67108864.0 + lo.to(torch.float64) + 0.5) / 9007199254740992.0
    return value


def draw_labels(family: ExponentialFamily, h: torch.Tensor, samples: int, seed: int,
                start: int | torch.Tensor) -> torch.Tensor:
    """Labels ``y ~ p(y|h)`` for outputs ``h`` (n, T) of inputs number ``start … start + n − 1``
    (or of the global indices ``start``, a tensor): ``(n, samples)`` class indices or
    ``(n, samples, T)`` values. Every mode of fimvar draws its labels here."""
    if isinstance(start, torch.Tensor):
        index = start
    else:
        index = torch.arange(int(start), int(start) + h.shape[0])
    noise = uniforms(seed, index, samples, family.uniform_width(h.shape[1]), device=h.device)
    return family.sample(h, noise)


def draw_residuals(family: ExponentialFamily, h: torch.Tensor, samples: int, seed: int,
                   start: int | torch.Tensor) -> torch.Tensor:
    """``ε = t(y) − η(h)`` of the labels of :func:`draw_labels`, ``(n, samples, T)`` float64."""
    return family.centered(h, draw_labels(family, h, samples, seed, start))


def sample_labels(family, outputs: torch.Tensor, samples: int, seed: int = 0, start: int = 0):
    """The labels :func:`fimvar.analyze` draws for outputs ``(n, T)`` of inputs number
    ``start … start + n − 1``: ``(n, samples)`` class indices or ``(n, samples, T)`` values; for
    per-position outputs ``(n, L, T)``, ``(n, samples, L)`` or ``(n, samples, L, T)``."""
    family = get_family(family)
    seed = check_seed(seed)
    outputs = outputs.detach().to(torch.float64)
    if outputs.dim() == 1:
        outputs = outputs[:, None]
    if outputs.dim() > 2:
        family = Positions(family, math.prod(outputs.shape[1:-1]))
        outputs = outputs.reshape(outputs.shape[0], -1)
    return draw_labels(family, outputs, samples, seed, start)


#: mixed into the seed of the probe directions, so that they are independent of the label draws
_PROBE_DOMAIN = 0x2C1B3C6D


def rademacher(seed: int, sample_index: torch.Tensor, probes: int, count: int,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Independent random signs ±1, ``(n, probes, count)``: probe ``r`` of input number
    ``sample_index[n]`` always receives the same signs for a given seed (docs/theory.md §14.1).

    One hash gives 32 signs (its bits), so that millions of parameters cost little; the hash is
    the one of the label draws, in a domain of its own (the signs are independent of the
    labels drawn with the same seed).
    """
    sample_index = sample_index.to(device=device, dtype=torch.int64)
    words = (count + 31) // 32
    probe = torch.arange(probes, device=device, dtype=torch.int64)
    word = torch.arange(words, device=device, dtype=torch.int64)
    seed_hash = _hash32(torch.tensor((seed & _MASK32) ^ _PROBE_DOMAIN, dtype=torch.int64, device=device))
    seed_hash = _hash32(seed_hash ^ ((seed >> 32) & _MASK32))
    key = _hash32(seed_hash ^ _hash32(sample_index & _MASK32) ^ _hash32((sample_index >> 32) + 0x9E37))
    cell = _hash32(key[:, None, None] ^ _hash32(probe[None, :, None] * 0x10001 + 0x68E31DA4))
    bits = _hash32(cell ^ _hash32(word[None, None, :] * 2 + 0x1B873593))  # (n, probes, words)
    # bit b of word w is the sign of entry 32 w + b: each byte of a word looks its 8 signs up in a
    # table, a block of words at a time (no int64 tensor of one element per sign)
    table = 1 - 2 * ((torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1)
    table = table.to(dtype)
    signs = torch.empty(*bits.shape[:2], count, dtype=dtype, device=device)
    step = 1 << 16
    for start in range(0, words, step):
        block = bits[:, :, start : start + step]
        octets = torch.stack([(block >> (8 * k)) & 255 for k in range(4)], -1)  # (n, probes, w, 4)
        values = table[octets].reshape(*block.shape[:2], -1)  # (n, probes, 32 w)
        stop = min(count, 32 * (start + step))
        signs[:, :, 32 * start : stop] = values[:, :, : stop - 32 * start]
    return signs
