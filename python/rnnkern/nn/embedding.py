"""`Embedding`: a lookup table of vectors, like `torch.nn.Embedding`."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from .linear import ParamModule, Seed, _check_dtype, _check_size, _random

__all__ = ["Embedding"]

Array = npt.NDArray[Any]


class Embedding(ParamModule):
    """Lookup table: indices (...) -> weight[indices] (..., embedding_dim).

    weight (num_embeddings, embedding_dim) ~ N(0, 1) as PyTorch initializes it, reproducible with
    ``seed``. ``padding_idx`` (negative counts from the end, as in PyTorch): that row starts at
    zero and never receives a gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: npt.DTypeLike = np.float32,
                 seed: Seed = None, padding_idx: Optional[int] = None) -> None:
        self.num_embeddings = _check_size("num_embeddings", num_embeddings)
        self.embedding_dim = _check_size("embedding_dim", embedding_dim)
        self.dtype = _check_dtype(dtype)
        if padding_idx is not None:
            p = _check_size("padding_idx", padding_idx, -self.num_embeddings)
            if p >= self.num_embeddings:
                raise ValueError(f"padding_idx: must be in -{self.num_embeddings}.."
                                 f"{self.num_embeddings - 1}, got {p}")
            padding_idx = p % self.num_embeddings
        self.padding_idx = padding_idx
        rng = np.random.default_rng(seed)
        weight = _random("weight", (self.num_embeddings, self.embedding_dim), self.dtype,
                         rng.standard_normal)  # (N, D)
        if padding_idx is not None:
            weight[padding_idx] = 0  # (N, D)
        self._init_params({"weight": weight})
        self._idx: Optional[Array] = None  # (...): the last training forward's indices

    def _check_indices(self, indices: object) -> Array:
        if not isinstance(indices, np.ndarray):
            raise TypeError(f"indices: expected a numpy.ndarray, got {type(indices).__name__}")
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices: expected an integer dtype, got dtype {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_embeddings):
            raise ValueError(f"indices: every value must be in 0..{self.num_embeddings - 1}, "
                             f"got min {indices.min()}, max {indices.max()}")
        return indices

    def __call__(self, indices: Array, training: bool = True) -> Array:
        """indices int (...) -> vectors (..., embedding_dim). ``training`` keeps the indices."""
        idx = self._check_indices(indices)
        self._idx = idx.copy() if training else None
        return self.params["weight"][idx]

    def backward(self, dy: Array) -> None:
        """Add dy (..., embedding_dim) of the last training forward into grads["weight"]."""
        if self._idx is None:
            raise RuntimeError(
                "backward: no saved forward; call the layer with training=True first")
        dy = self._check_input("dy", dy)
        want = (*self._idx.shape, self.embedding_dim)
        if dy.shape != want:
            raise ValueError(f"dy: expected shape (..., embedding_dim) = {want}, got {dy.shape}")
        flat = self._idx.reshape(-1)  # (N,)
        rows = dy.reshape(-1, self.embedding_dim)  # (N, D)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, rows = flat[keep], rows[keep]
        np.add.at(self.grads["weight"], flat, rows)

    def __repr__(self) -> str:
        extra = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        if self.dtype != np.dtype(np.float32):
            extra += f", dtype={self.dtype}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{extra})"
