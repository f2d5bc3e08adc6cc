"""Fréchet distance vs a direct float64 scipy evaluation of the formula; FID of a set with itself is 0."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from humandiff.metrics.frechet import feature_stats, frechet_distance, frechet_from_features


def _reference(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_matches_scipy_reference():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(200, 16))
    f2 = rng.normal(loc=0.3, scale=1.2, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5
    want = _reference(f1, f2)
    assert abs(frechet_from_features(f1, f2) - want) <= 1e-9 * max(1.0, abs(want))
    assert frechet_from_features(f1.astype(np.float32), f2) == pytest.approx(want, rel=1e-5)


def test_same_set_is_zero_and_known_gaussians():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(64, 32))
    assert abs(frechet_from_features(f, f)) <= 1e-6
    # Rank-deficient covariance (fewer samples than dims, as FVD over few videos): ~0 relative to the trace
    # (sqrtm of a singular product loses ~1e-8 relative accuracy; measured 1.2e-6 absolute on a trace of ~40).
    g = rng.normal(size=(10, 40))
    assert abs(frechet_from_features(g, g)) <= 1e-6 * np.trace(np.cov(g, rowvar=False))
    # Closed form for isotropic Gaussians: |mu1-mu2|^2 + D (s1 - s2)^2 with standard deviations s1, s2.
    d = 4
    got = frechet_distance(np.zeros(d), np.eye(d) * 4.0, np.ones(d), np.eye(d) * 1.0)
    assert got == pytest.approx(d * 1.0 + d * (2.0 - 1.0) ** 2, abs=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
