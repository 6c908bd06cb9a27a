"""An independent judge of conditional samples: a classifier trained on the data alone (never on
the EBM), here scikit-learn's RBF support-vector machine on the pixels, as the digits8
reproduction does. "Conditional samples judged as their class" is its agreement with the class
the samples were drawn for."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
from ebmkit import MissingDependencyError
from torch import Tensor

__all__ = ["Judge", "judge_for"]


def _svc():
    if importlib.util.find_spec("sklearn") is None:
        raise MissingDependencyError("the independent judge of conditional samples",
                                     "pip install scikit-learn")
    from sklearn.svm import SVC

    return SVC


class Judge:
    """``Judge(x, y)`` fits an RBF SVM (``C``, ``gamma="scale"``) on images ``[N, ...]`` in
    ``[-1, 1]`` and their labels; ``predict(x)`` gives labels (inputs clamped to ``[-1, 1]``,
    non-finite pixels set to 0); ``accuracy(x, y)`` the fraction predicted as ``y``."""

    def __init__(self, x: Tensor, y: Tensor, *, c: float = 5.0):
        self.model = _svc()(C=c, gamma="scale")
        self.model.fit(self._features(x), np.asarray(y.cpu(), dtype=np.int64))

    @staticmethod
    def _features(x: Tensor) -> np.ndarray:
        a = x.detach().double().cpu().reshape(x.shape[0], -1).numpy()
        return np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)

    def predict(self, x: Tensor) -> np.ndarray:
        return np.asarray(self.model.predict(self._features(x)), dtype=np.int64)

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return float((self.predict(x) == np.asarray(y.cpu(), dtype=np.int64)).mean())


@functools.lru_cache(maxsize=4)
def _cached(key: tuple, x_bytes: bytes, y_bytes: bytes, shape: tuple, c: float) -> Judge:
    import torch

    x = torch.from_numpy(np.frombuffer(x_bytes, dtype=np.float32).reshape(shape).copy())
    y = torch.from_numpy(np.frombuffer(y_bytes, dtype=np.int64).copy())
    return Judge(x, y, c=c)


def judge_for(x: Tensor, y: Tensor, *, c: float = 5.0) -> Judge:
    """A :class:`Judge` for this training set, fitted once per process (cached on the data)."""
    xf = x.detach().float().cpu().contiguous()
    yl = y.detach().long().cpu().contiguous()
    return _cached((tuple(xf.shape), float(xf.sum()), int(yl.sum())), xf.numpy().tobytes(),
                   yl.numpy().tobytes(), tuple(xf.shape), c)
