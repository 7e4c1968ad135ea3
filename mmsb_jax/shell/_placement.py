"""Where pages live: devices (with the GPU fallback), pools by ``(shape, dtype, location)``,
their shardings over a mesh and the memory budgets they claim from; shape and dtype checks
of new pages. A mixin of :class:`MMSBState`: it reads the state's ``_pools``,
``_pool_by_key``, ``_spec_cache``, ``_budgets``, ``_host_budget``, ``_table``, ``_gpu``,
``_cpu``, ``mesh`` and ``_warned_gpu``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import numpy as np

from .._checks import is_int
from .._errors import GPUFallbackWarning, InvalidArgumentError, ResourceLimitError, UnsupportedLocationError
from ..deltas._pool_ops import SINGLE_DEVICE, sharded_ops
from ..pages import MAX_PAGE_ELEMS, MemoryBudget, PagePool, device_memory_bytes, page_sharding

_LOCATIONS = ("cpu", "gpu")


class Placement:
    """Mixin of :class:`MMSBState`: devices, pools, shardings, memory budgets."""

    # ------------------------------------------------------------------ devices
    @staticmethod
    def _find_gpu():
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            return None
        return gpus[0] if gpus else None

    def _warn_gpu(self, message: str) -> None:
        if not self._warned_gpu:
            self._warned_gpu = True
            warnings.warn(message, GPUFallbackWarning, stacklevel=4)

    def _device_for(self, location) -> tuple[Any, str]:
        if location not in _LOCATIONS:
            raise UnsupportedLocationError(f"location={location!r} is not supported; expected one of {_LOCATIONS}")
        if location == "gpu":
            if self._gpu is not None:
                return self._gpu, "gpu"
            self._warn_gpu(
                "location='gpu' asked for, but "
                + ("no GPU is available" if self._find_gpu() is None else "the state was started with enable_gpu=False")
                + "; the page lives on the CPU"
            )
        return self._cpu, "cpu"

    # ------------------------------------------------------------------ pools
    def _resolve_spec(self, size, shape, dtype, location, *, register: bool = True) -> tuple[PagePool | None, tuple]:
        # Cache only exact ints: True == 1 and 2.0 == 2 as dict keys, but they are not sizes.
        exact = (size is None or type(size) is int) and (
            shape is None or (type(shape) is tuple and all(type(d) is int for d in shape))
        )
        try:
            # keyed on the dtype object's identity (jax's scalar types hash in Python); the entry
            # holds the object, so the id cannot be reused while it is cached
            key = (size, shape, id(dtype), location) if exact else None
            hit = self._spec_cache.get(key) if exact else None
        except TypeError:  # an unhashable location: take the slow path
            key, hit = None, None
        if hit is not None and hit[2] is dtype:
            return hit[0], hit[1]
        shape = self._normalize_shape(size, shape)
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise InvalidArgumentError(f"dtype={dtype!r} is not a dtype") from None
        if np_dtype.kind not in "biuf" and np_dtype.name != "bfloat16":
            raise InvalidArgumentError(f"dtype={np_dtype} is not supported; expected a bool, integer or float dtype")
        if jax.dtypes.canonicalize_dtype(np_dtype) != np_dtype:
            raise InvalidArgumentError(
                f"dtype={np_dtype} needs JAX's 64-bit mode, which is off (JAX would store "
                f"{jax.dtypes.canonicalize_dtype(np_dtype)}); call jax.config.update('jax_enable_x64', True) "
                "first, or use a 32-bit dtype"
            )
        device, real_location = self._device_for(location)
        pool_key = (shape, np_dtype, real_location)
        pool = self._pool_by_key.get(pool_key)
        if pool is None and not register:
            return None, shape
        if pool is None:
            sharding = self._pool_sharding(real_location)
            ops = SINGLE_DEVICE if sharding is None else sharded_ops(sharding)
            pool = PagePool(len(self._pools), shape, np_dtype, device, real_location, sharding, ops,
                            budget=self._budget_for(device, sharding))
            self._pools.append(pool)
            self._pool_by_key[pool_key] = pool
        if key is not None:
            self._spec_cache[key] = (pool, shape, dtype)
        return pool, shape

    def _budget_for(self, device, sharding) -> MemoryBudget:
        """The memory budget pools on this placement share: one for the host (CPU devices, the
        page table), one per set of accelerator devices."""
        devices = sorted(sharding.device_set, key=lambda d: d.id) if sharding is not None else [device]
        if all(d.platform == "cpu" for d in devices):
            return self._host_budget
        key = tuple(d.id for d in devices)
        budget = self._budgets.get(key)
        if budget is None:
            limit = sum(device_memory_bytes(d) for d in devices)
            budget = self._budgets[key] = MemoryBudget(limit, ", ".join(str(d) for d in devices))
        return budget

    def _check_room(self, pool: PagePool, n: int) -> None:
        """Raise ResourceLimitError unless ``n`` more pages of ``pool`` (and their page ids) fit
        in memory; pure (nothing is reserved)."""
        pool_bytes = pool.growth_bytes(n)
        table_bytes = self._table.growth_bytes(self._table.next_id + n)
        host = self._host_budget
        if pool.budget is host:
            pool_bytes, table_bytes = pool_bytes + table_bytes, 0
        elif pool.budget is not None and pool_bytes > pool.budget.available():
            host = pool.budget
        if pool_bytes > host.available() or table_bytes > self._host_budget.available():
            raise ResourceLimitError(
                f"{n:,} pages of {pool.dtype.name}{pool.shape} ({n * pool.page_bytes:,} bytes) and their "
                f"page ids do not fit in the memory of {host.where} ({host.limit:,} bytes, "
                f"{host.reserved:,} already reserved)"
            )

    def _drop_new_pool(self, pool: PagePool) -> None:
        """Undo the registration of a pool that never held a page (its first reservation was
        refused), so a refused create leaves the state exactly as it was."""
        if pool.high_water == 0 and self._pools and self._pools[-1] is pool:
            self._pools.pop()
            self._pool_by_key = {k: v for k, v in self._pool_by_key.items() if v is not pool}
            self._spec_cache = {k: v for k, v in self._spec_cache.items() if v[0] is not pool}

    def _pool_sharding(self, location: str):
        """Pools whose location is the mesh's platform are split over the mesh by slot."""
        if self.mesh is None:
            return None
        platform = next(iter(self.mesh.devices.flat)).platform
        return page_sharding(self.mesh) if (platform == "cpu") == (location == "cpu") else None

    @staticmethod
    def _normalize_shape(size, shape) -> tuple:
        if shape is None and size is None:
            raise InvalidArgumentError("create_page needs size= or shape=")
        if shape is not None:
            if isinstance(shape, (int, np.integer)):
                shape = (shape,)
            try:
                dims = tuple(shape)
            except TypeError:
                raise InvalidArgumentError(f"shape={shape!r} is not a tuple of ints") from None
            for d in dims:
                if not is_int(d):
                    raise InvalidArgumentError(f"shape={shape!r} has a non-integer dimension {d!r}")
            shape = tuple(int(d) for d in dims)
            if any(s <= 0 for s in shape):  # shape=() is a scalar page of one element
                raise InvalidArgumentError(f"shape={shape} must have every dimension > 0")
            if size is not None and not is_int(size):
                raise InvalidArgumentError(f"size={size!r} must be a positive int")
            if size is not None and int(size) != math.prod(shape):
                raise InvalidArgumentError(f"size={size} does not match shape={shape} ({math.prod(shape)} elements)")
            return Placement._check_page_elems(shape)
        if not is_int(size):
            raise InvalidArgumentError(f"size={size!r} must be a positive int")
        if size <= 0:
            raise InvalidArgumentError(f"size={size} must be a positive number of elements")
        return Placement._check_page_elems((int(size),))

    @staticmethod
    def _check_page_elems(shape: tuple) -> tuple:
        elems = math.prod(shape)
        if elems > MAX_PAGE_ELEMS:
            raise InvalidArgumentError(
                f"a page of shape {shape} holds {elems} elements; at most {MAX_PAGE_ELEMS} (2**31) are "
                "supported (flat indices into a page are int32)"
            )
        return shape
