"""Distribution shift and out-of-distribution inputs for the digits (notebook 06).

Images are scikit-learn's 8×8 digits with pixels in [0, 1] (:func:`sigma.lab.data.digits_split`),
flattened (N, 64) or as (N, 8, 8[, 1]); every function returns the shape it was given.

* :func:`rotate` — each image rotated by an angle in degrees about its centre
  (``scipy.ndimage.rotate``, bilinear, the corners filled with 0 = background, clipped to [0, 1]);
* :func:`add_noise` — Gaussian pixel noise of a standard deviation, clipped to [0, 1];
* :func:`uniform_images` — images of independent uniform pixels (no digit at all);
* :func:`invert` — the digits' own inversions 1 − x (dark digit on a light background).

All are seeded where random.
"""

from __future__ import annotations

import numpy as np

SIDE = 8  # pixels per side of a digits image


def _as_images(x):
    x = np.asarray(x, np.float64)
    if x.ndim < 2 or x[0].size != SIDE * SIDE:
        raise ValueError(f"x must be digits images (N, 64) or (N, 8, 8[, 1]), got {x.shape}")
    return x.reshape(-1, SIDE, SIDE), x.shape


def rotate(x, angle: float) -> np.ndarray:
    """The images x rotated by ``angle`` degrees (counter-clockwise), same shape as x."""
    from scipy.ndimage import rotate as nd_rotate

    images, shape = _as_images(x)
    if not np.isfinite(angle):
        raise ValueError(f"angle must be a finite number of degrees, got {angle}")
    out = nd_rotate(images, float(angle), axes=(1, 2), reshape=False, order=1, mode="constant")
    return np.clip(out, 0.0, 1.0).reshape(shape)


def add_noise(x, std: float, *, seed: int = 0) -> np.ndarray:
    """x + N(0, std²) per pixel, clipped to [0, 1]; same shape as x."""
    images, shape = _as_images(x)
    if not (np.isfinite(std) and std >= 0):
        raise ValueError(f"std must be a finite number >= 0, got {std}")
    noisy = images + float(std) * np.random.default_rng(seed).normal(size=images.shape)
    return np.clip(noisy, 0.0, 1.0).reshape(shape)


def uniform_images(n: int, *, seed: int = 0, like=None) -> np.ndarray:
    """``n`` images of independent U(0, 1) pixels: (n, 64), or the trailing shape of ``like``."""
    tail = (SIDE * SIDE,) if like is None else np.shape(like)[1:]
    return np.random.default_rng(seed).uniform(size=(int(n), *tail))


def invert(x) -> np.ndarray:
    """1 − x: the digits' inversions; same shape as x."""
    images, shape = _as_images(x)
    return (1.0 - images).reshape(shape)
