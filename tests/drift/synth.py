"""Seeded synthetic embedding streams for the drift tests: Gaussian clusters on the unit sphere."""
from __future__ import annotations

import numpy as np

DIM = 64


def centres(seed: int = 0, k: int = 6, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    return rng.normal(size=(k, dim)) + 1.0 * common


def sample(rng: np.random.Generator, c: np.ndarray, which, n: int, noise: float = 1.0,
           bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around the centres ``which`` (uniform mix) and their 'pre-normalisation' norms."""
    v = c[rng.choice(list(which), n)] + rng.normal(scale=noise, size=(n, c.shape[1]))
    if bias is not None:
        v = v + bias
    norms = np.linalg.norm(v, axis=1)
    return (v / norms[:, None]).astype(np.float32), norms.astype(np.float32)


def switch_stream(seed: int, n_before: int, n_after: int, before=(0, 1, 2, 3), after=(4, 5), dim: int = DIM):
    """Vectors+norms with an abrupt topic switch at index n_before."""
    c = centres(seed, dim=dim)
    rng = np.random.default_rng(seed + 1)
    v0, n0 = sample(rng, c, before, n_before)
    v1, n1 = sample(rng, c, after, n_after)
    return np.vstack([v0, v1]), np.concatenate([n0, n1])


def feed(monitor, vectors, norms=None, batch: int = 128, flush: bool = True, **meta):
    """Feed a stream in batches; returns all alerts.

    ``flush``: at the end, process the events the monitor's micro-batching still holds back
    (batches smaller than ``DriftConfig.min_batch``), as if the stream went on.
    """
    alerts = []
    for s in range(0, len(vectors), batch):
        e = s + batch
        kw = {k: v[s:e] for k, v in meta.items()}
        alerts += monitor.observe(vectors[s:e], norms=None if norms is None else norms[s:e], **kw)
    if flush:
        alerts += monitor.flush()
    return alerts
