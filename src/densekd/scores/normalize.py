"""Per-query score normalisation, so that signals in different units can be summed.

Used by teacher-signal fusion (:mod:`densekd.teachers.fusion`) and run fusion
(:func:`densekd.index.hybrid.fuse`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["zscore"]


def zscore(x: np.ndarray, min_std: float = 1e-12) -> np.ndarray:
    """``(x - mean) / std`` over one query's candidate list; a (near-)constant list maps to zeros.

    Parameters
    ----------
    x
        ``float[n]`` scores of one query's candidates.
    min_std
        A list whose standard deviation is below this (or zero) carries no ordering and maps to zeros.

    Examples
    --------
    >>> zscore(np.array([1.0, 2.0, 3.0])).round(3).tolist()
    [-1.225, 0.0, 1.225]
    >>> zscore(np.array([0.1, 0.1, 0.1])).tolist()
    [0.0, 0.0, 0.0]
    """
    std = x.std()
    return np.zeros_like(x) if std < min_std or std == 0 else (x - x.mean()) / std
