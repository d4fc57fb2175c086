"""The streaming input variance (docs/theory.md §12) against the exact variance (rational
arithmetic), merged over chunks of every size, on spread-out and on near-duplicate values."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from fimvar.estimators import moments


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("spread", [1.0, 1e-7])
@pytest.mark.parametrize("chunk", [1, 3, 10, 64])
def test_chunked_variance_matches_numpy(spread, chunk, in_place):
    """``merge`` and ``merge_into`` (the sums' own memory, the chunk's m2 as scratch)."""
    generator = torch.Generator().manual_seed(0)
    values = 5.0 + spread * torch.randn(64, 7, generator=generator, dtype=torch.float64)
    count, total, m2 = 0, None, None
    for start in range(0, 64, chunk):
        part = values[start:start + chunk]
        chunk_total, chunk_m2 = moments.chunk_moments(part)
        if in_place and total is not None:
            kept = total.data_ptr(), m2.data_ptr()
            total, m2 = moments.merge_into(count, total, m2, part.shape[0], chunk_total, chunk_m2)
            assert (total.data_ptr(), m2.data_ptr()) == kept
        else:
            total, m2 = moments.merge(count, total, m2, part.shape[0], chunk_total, chunk_m2)
        count += part.shape[0]
    expected = []
    for column in values.T.tolist():
        exact = [Fraction(v) for v in column]
        mean = sum(exact) / len(exact)
        expected.append(float(sum((v - mean) ** 2 for v in exact) / (len(exact) - 1)))
    variance = moments.sample_variance(count, m2).numpy()
    # the differences from the mean are formed with an absolute rounding error of about ε|mean|:
    # the relative error of the variance is a small multiple of ε |mean| / std
    condition = 5.0 / spread
    tolerance = 16 * np.finfo(np.float64).eps * max(condition, 1.0)
    assert np.allclose(variance, expected, rtol=tolerance, atol=0)
    assert np.allclose(total.numpy(), values.sum(0).numpy(), rtol=1e-15)


def test_one_input_and_identical_inputs_have_zero_variance():
    one = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    assert moments.sample_variance(1, moments.chunk_moments(one)[1]).eq(0).all()
    same = torch.full((5, 2), 0.1, dtype=torch.float64)
    assert moments.sample_variance(5, moments.chunk_moments(same)[1]).eq(0).all()
