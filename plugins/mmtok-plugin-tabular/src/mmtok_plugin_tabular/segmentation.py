"""Cutting a long recording into windows: beats centred on their R peaks, or fixed-length
windows with overlap. Both take ``signal`` (t,) or (c, t) and return the windows (n, c, w) and
the sample positions that define them.

    windows, peaks, kept = beat_windows(mlii, r_peaks, fs=360)      # 0.25 s before, 0.45 s after
    windows, starts = sliding_windows(mlii, window=720, hop=360)    # 2 s windows, 50 % overlap
"""

import numpy as np

from mmtok import MmtokError

__all__ = ["SegmentationError", "beat_windows", "sliding_windows"]


class SegmentationError(MmtokError, ValueError):
    """Window settings or peak positions that cannot cut the signal."""


def _channels_first(signal: np.ndarray) -> np.ndarray:
    x = np.asarray(signal)
    if x.ndim == 1:
        return x[None]
    if x.ndim != 2:
        raise SegmentationError(f"signal: expected (t,) or (c, t), found shape {x.shape}")
    return x


def beat_windows(signal: np.ndarray, peaks: np.ndarray, fs: float, before: float = 0.25,
                 after: float = 0.45) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window per R peak: samples ``[p - round(before * fs), p + round(after * fs))``.

    signal (t,) or (c, t); peaks (n,) sample indices. Returns windows (m, c, w) with
    w = round(before * fs) + round(after * fs), the peaks kept (m,), and their indices into
    ``peaks`` (m,). Peaks whose window runs past either end of the signal are dropped (m <= n).
    """
    x = _channels_first(signal)
    peaks = np.asarray(peaks, dtype=np.int64)
    if peaks.ndim != 1:
        raise SegmentationError(f"peaks: expected (n,) sample indices, found shape {peaks.shape}")
    if fs <= 0 or before < 0 or after <= 0:
        raise SegmentationError(f"expected fs > 0, before >= 0, after > 0; found fs={fs}, before={before}, "
                                f"after={after}")
    lo, hi = int(round(before * fs)), int(round(after * fs))
    keep = np.flatnonzero((peaks - lo >= 0) & (peaks + hi <= x.shape[1]))
    kept = peaks[keep]
    index = kept[:, None] + np.arange(-lo, hi)[None]  # (m, w)
    return np.ascontiguousarray(x[:, index].transpose(1, 0, 2)), kept, keep


def sliding_windows(signal: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``window`` samples every ``hop`` samples (overlap = window - hop when hop <
    window), from sample 0; a last partial window is dropped.

    signal (t,) or (c, t). Returns windows (n, c, window) and their start samples (n,),
    n = (t - window) // hop + 1 (0 when t < window).
    """
    x = _channels_first(signal)
    if window < 1 or hop < 1:
        raise SegmentationError(f"expected window >= 1 and hop >= 1 samples, found window={window}, hop={hop}")
    t = x.shape[1]
    n = (t - window) // hop + 1 if t >= window else 0
    starts = np.arange(n, dtype=np.int64) * hop
    index = starts[:, None] + np.arange(window)[None]  # (n, window)
    return np.ascontiguousarray(x[:, index].transpose(1, 0, 2)), starts
