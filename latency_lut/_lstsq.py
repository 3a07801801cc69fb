"""Small weighted least squares with the diagnostics the latency models report."""

from __future__ import annotations

import numpy as np

#: Leverage is clipped below 1 so that an entry that alone fixes a coefficient gets a large, finite
#: leave-one-out error instead of a division by zero.
_MAX_LEVERAGE = 0.99


def relative_lstsq(
    x: np.ndarray, y: np.ndarray, *, nonnegative: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients minimising the squared *relative* error `sum(((x @ b - y) / y) ** 2)`, and the
    leave-one-out relative errors of the rows.

    `nonnegative[j]` asks coefficient j to be >= 0: columns whose coefficient comes out negative are
    dropped (their coefficient is 0) and the rest refitted, until none is negative. Columns are
    scaled to unit maximum first, so features of very different sizes (MACs, bytes) fit alike.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x of shape (n, p) and y of shape (n,), got {x.shape} and {y.shape}")
    if np.any(y <= 0):
        raise ValueError("relative least squares needs positive targets")
    scale = np.max(np.abs(x), axis=0)
    scale[scale == 0] = 1.0
    a = x / scale / y[:, None]
    target = np.ones_like(y)
    active = np.ones(x.shape[1], dtype=bool)
    guard = np.zeros(x.shape[1], dtype=bool) if nonnegative is None else np.asarray(nonnegative, bool)
    coef = np.zeros(x.shape[1])
    while True:
        solution, *_ = np.linalg.lstsq(a[:, active], target, rcond=None)
        coef = np.zeros(x.shape[1])
        coef[active] = solution
        negative = guard & active & (coef < 0)
        if not negative.any():
            break
        # Drop the most negative one at a time: dropping one can make the others positive again.
        worst = int(np.argmin(np.where(negative, coef, np.inf)))
        active[worst] = False
        if not active.any():
            break
    residual = a @ coef - target
    sub = a[:, active]
    if sub.shape[1]:
        gram_inv = np.linalg.pinv(sub.T @ sub)
        leverage = np.einsum("ij,jk,ik->i", sub, gram_inv, sub)
    else:
        leverage = np.zeros(len(y))
    loo = residual / (1.0 - np.minimum(leverage, _MAX_LEVERAGE))
    return coef / scale, loo


def rms(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")
