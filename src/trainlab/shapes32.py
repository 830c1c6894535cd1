"""shapes32: procedurally generated 3x32x32 colour images of 10 shape and texture classes, a CIFAR-shaped
workload that needs no download.

Each image is one shape on a textured background: a random position (the centre anywhere in the middle
20x20 pixels), scale (radius 6 to 12 pixels), a small rotation (within +-20 degrees, so a plus and an X stay
different classes), a random foreground colour kept apart from the background's, a background texture
(a colour gradient, a sinusoidal grating of random direction and frequency, or blotches of low-frequency
noise) and pixel noise of a random strength; some images are partly outside the frame. The classes:

    0 disc  1 ring  2 square  3 frame (square outline)  4 triangle  5 plus  6 x  7 diamond
    8 striped disc  9 chequered disc

Every class is symmetric under a horizontal flip, so flipping is a label-preserving augmentation. The
images are generated with numpy in one vectorized pass (about a second for 12,000), stored as 8-bit like
real photographs, and cached under ~/.cache/trainlab; the train and test splits come from fixed seeds.

    arrays = shapes32_arrays()              # x (10000, 3, 32, 32) uint8, y, x_test (2000, ...), y_test
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from trainlab.datacache import cached_arrays

__all__ = ["CLASSES", "generate", "shapes32_arrays", "TRAIN_SIZE", "TEST_SIZE", "SIZE"]

CLASSES = ("disc", "ring", "square", "frame", "triangle", "plus", "x", "diamond", "striped disc", "chequered disc")
SIZE = 32
TRAIN_SIZE, TEST_SIZE = 10_000, 2_000
TRAIN_SEED, TEST_SEED = 0, 1
VERSION = 2  # bump when the generator changes, so cached files of the old one are not used


def _shape_distance(c: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (in units of the radius; < 0 inside) of class `c`'s shape, per pixel.
    `u`, `v`: (N, H, W) coordinates in the shape's frame."""
    au, av = np.abs(u), np.abs(v)
    if c in (0, 8, 9):  # disc, and the discs that carry a texture
        return np.sqrt(u * u + v * v) - 1.0
    if c == 1:
        return np.abs(np.sqrt(u * u + v * v) - 0.72) - 0.25
    if c == 2:
        return np.maximum(au, av) - 0.8
    if c == 3:
        return np.abs(np.maximum(au, av) - 0.72) - 0.16
    if c == 4:
        return np.maximum(au * np.sqrt(3) / 2 + v / 2, -v) - 0.5
    if c == 6:  # the x is a plus turned by 45 degrees
        au, av = np.abs(u + v) / np.sqrt(2), np.abs(u - v) / np.sqrt(2)
    if c in (5, 6):
        return np.minimum(np.maximum(au - 0.28, av - 0.95), np.maximum(av - 0.28, au - 0.95))
    return au + av - 1.05  # 7: diamond


def _backgrounds(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(N, H, W) texture in [-1, 1]: a gradient, a grating or low-frequency blotches, one per image."""
    kind = rng.integers(0, 3, n)
    angle = rng.uniform(0, np.pi, n)[:, None, None]
    along = ((np.cos(angle) * xx + np.sin(angle) * yy) / SIZE).astype(np.float32)  # -0.5 .. 0.5 across
    freq = rng.uniform(2, 6, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    coarse = rng.uniform(-1, 1, (n, 5, 5)).astype(np.float32)
    out = 2 * along  # kind 0: a gradient
    g = kind == 1
    out[g] = np.sin(2 * np.pi * freq[g] * along[g] + phase[g])
    b = kind == 2  # blotches: a 5x5 grid bilinearly upsampled to 32x32
    t = np.linspace(0, 4, SIZE, dtype=np.float32)
    i0 = np.minimum(t.astype(int), 3)
    f = t - i0
    rows = coarse[b][:, i0, :] * (1 - f)[None, :, None] + coarse[b][:, i0 + 1, :] * f[None, :, None]
    out[b] = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    return out


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (N, 3, 32, 32) uint8 and their classes (N,) int64, balanced, from `seed` alone."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(CLASSES))
    out = np.empty((n, 3, SIZE, SIZE), np.uint8)
    for start in range(0, n, _CHUNK):  # a chunk's arrays stay in cache; float64 over all 12,000 does not
        out[start:start + _CHUNK] = _images(rng, y[start:start + _CHUNK])
    return out, y.astype(np.int64)


_CHUNK = 500


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _images(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    n = len(y)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    cx, cy = _f32(rng.uniform(6, 26, (2, n)))[:, :, None, None]
    radius = _f32(rng.uniform(6, 12, n))[:, None, None]
    theta = _f32(np.deg2rad(rng.uniform(-20, 20, n)))[:, None, None]
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    mask = np.empty_like(u)
    for c in range(len(CLASSES)):  # each class's distance on its own images only
        idx = np.flatnonzero(y == c)
        d = _shape_distance(c, u[idx], v[idx])
        mask[idx] = np.clip(0.5 - d * radius[idx], 0.0, 1.0)  # anti-aliased over one pixel
    # a textured disc is drawn in its colour where its pattern holds and in a darker shade elsewhere
    shade = np.ones_like(u)
    for c, pattern in ((8, lambda u, v: np.sin(np.pi * 3.0 * v) > 0),  # three stripe pairs across the disc
                       (9, lambda u, v: (np.sin(np.pi * 2.0 * u) > 0) ^ (np.sin(np.pi * 2.0 * v) > 0))):
        idx = np.flatnonzero(y == c)
        shade[idx] = np.where(pattern(u[idx], v[idx]), 1.0, 0.45)

    bg_colour = rng.uniform(0.1, 0.9, (n, 3))
    fg_colour = rng.uniform(0.0, 1.0, (n, 3))
    close = np.linalg.norm(fg_colour - bg_colour, axis=1) < 0.5
    fg_colour[close] = np.clip(1.0 - bg_colour[close] + rng.normal(0, 0.1, (close.sum(), 3)), 0, 1)
    texture = _backgrounds(rng, n, yy, xx)[:, None] * _f32(rng.uniform(0.05, 0.2, n))[:, None, None, None]
    second = _f32(rng.uniform(0.0, 1.0, (n, 3)))[:, :, None, None]  # the texture's colour direction
    background = _f32(bg_colour)[:, :, None, None] + texture * (second - 0.5) * 2
    foreground = _f32(fg_colour)[:, :, None, None] * shade[:, None]
    m = mask[:, None]
    img = background * (1 - m) + foreground * m
    img += rng.standard_normal(img.shape, dtype=np.float32) * _f32(rng.uniform(0.02, 0.08, n))[:, None, None, None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@lru_cache(maxsize=2)
def shapes32_arrays(train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE) -> dict[str, np.ndarray]:
    """The train and test splits (uint8 images, int64 classes), generated once and cached on disk."""

    def make() -> dict[str, np.ndarray]:
        x, y = generate(train_size, TRAIN_SEED)
        x_test, y_test = generate(test_size, TEST_SEED)
        return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}

    key = hashlib.sha1(f"v{VERSION}-{train_size}-{test_size}".encode()).hexdigest()[:12]
    return cached_arrays(f"shapes32-{key}", make)
