"""Fréchet distance between Gaussian fits of two feature sets (FID, FID-VID, FVD), in float64 on the host."""

from __future__ import annotations

import logging

import numpy as np
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (`np.cov(rowvar=False)`) of `[N, D]` features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """`|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))` with scipy's `sqrtm`, as pytorch-fid / clean-fid / DisCo.

    A non-finite square root (singular product) is retried with `eps` on both diagonals; a small imaginary part
    from round-off is dropped, a large one (max |imag| > 1e-3 on the diagonal) is an error.

    Args:
      mu1: mean of set 1, `[D]`.
      sigma1: covariance of set 1, `[D, D]`.
      mu2: mean of set 2.
      sigma2: covariance of set 2.
      eps: diagonal offset for the singular case.

    Returns:
      The distance as a Python float.
    """
    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"feature statistics differ in shape: mean {mu1.shape} vs {mu2.shape}, cov {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logging.warning("Fréchet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two `[N, D]` feature sets."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))
