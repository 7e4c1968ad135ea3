"""The :class:`Page` handle returned by ``create_page``."""

from __future__ import annotations

import numpy as np


class Page:
    """A handle to one page: its id and what it holds. Read it with :func:`query_page`.

    Attributes:
      id: the page id (an int, never reused within a state).
      shape, dtype: the page's shape and numpy dtype.
      location: ``"cpu"`` or ``"gpu"``, where the page really lives.
      device: the ``jax.Device`` holding it; for a pool sharded over a mesh (``mesh=`` of
        :func:`mmsb_start`), the pool's ``NamedSharding``.
    """

    __slots__ = ("id", "shape", "dtype", "location", "device")

    def __init__(self, id: int, shape: tuple, dtype, location: str, device):
        self.id = id
        self.shape = shape
        self.dtype = dtype
        self.location = location
        self.device = device

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __repr__(self) -> str:
        return f"Page(id={self.id}, shape={self.shape}, dtype={np.dtype(self.dtype).name}, location={self.location!r})"

    def __int__(self) -> int:
        return self.id

    def __index__(self) -> int:
        return self.id
