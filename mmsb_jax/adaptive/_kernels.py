"""Which implementation runs: a Pallas kernel or the XLA path.

Policy (``auto``, the default): a kernel is used only on a GPU backend, only when the GPU
lowering these kernels need is present (:func:`gpu_lowering`), and only for
kernels recorded in :data:`MEASURED_FASTER`. Overrides, strongest first:

1. :func:`set_backend` (``"pallas"``, ``"xla"`` or ``"auto"``; ``None`` clears it);
2. the environment variable ``MMSB_KERNELS=pallas|xla|auto`` (read at each call);
3. ``auto``.

``pallas`` forces the kernels everywhere; off a GPU they run in the Pallas interpreter
(:func:`interpret` says so) — correct but slow, for testing the wiring. ``xla`` never uses
them.

Example:
  >>> from mmsb_jax import adaptive
  >>> previous = adaptive.set_backend("xla")
  >>> adaptive.use_pallas("segment_reduce")
  False
  >>> adaptive.set_backend(previous)
  'xla'
"""

from __future__ import annotations

import functools
import os
import threading

import jax

from .._errors import InvalidArgumentError

#: The kernels the policy decides on (one entry per fused operation and delta kind). The shell
#: consults only ``"scatter_merge.sparse"`` today (sparse batches); the other five name kernels
#: that are built and tested (``pallas_kernels``) but have no caller in the shell until a GPU
#: measurement shows them faster than XLA: ``benchmarks/gpu.py`` times every entry and prints
#: the :data:`MEASURED_FASTER` lines to add, and wiring a kernel in starts from that entry.
KERNELS = (
    "scatter_merge.dense",
    "scatter_merge.sparse",
    "scatter_merge.accumulate",
    "scatter_merge.overwrite",
    "segment_reduce",
    "gather_segment_reduce",
)

MODES = ("auto", "pallas", "xla")

#: Kernels measured faster than their XLA path on a GPU: kind -> record of the measurement
#: (device, jax version, speedup, the benchmark that showed it). EMPTY ON PURPOSE: no kernel
#: here has been timed on a GPU yet (they were written and tested in interpret mode on CPU,
#: and their Triton lowering checked without a device), so ``auto`` picks XLA everywhere.
#: Fill it from ``python benchmarks/gpu.py`` output on the target device, e.g.
#: ``{"scatter_merge.dense": {"device": "H100", "jax": "0.11.2", "speedup": 1.7}}``.
MEASURED_FASTER: dict[str, dict] = {}

_ENV = "MMSB_KERNELS"
_lock = threading.Lock()
_override: str | None = None


def _check_mode(mode: str, where: str) -> str:
    m = str(mode).strip().lower()
    if m not in MODES:
        raise InvalidArgumentError(f"{where} must be one of {MODES}, got {mode!r}")
    return m


def set_backend(mode: str | None) -> str | None:
    """Force ``"pallas"`` or ``"xla"``, or ``"auto"`` (the policy); ``None`` clears the
    override (then ``MMSB_KERNELS`` or ``auto`` decides). Returns the previous override.

    Raises:
      InvalidArgumentError: an unknown mode.
    """
    global _override
    new = None if mode is None else _check_mode(mode, "set_backend(mode)")
    with _lock:
        old, _override = _override, new
    return old


def get_backend() -> tuple[str, str]:
    """``(mode, source)``: the mode in force and where it came from
    (``"set_backend"``, ``"env"`` or ``"default"``).

    Raises:
      InvalidArgumentError: ``MMSB_KERNELS`` holds an unknown mode.
    """
    with _lock:
        override = _override
    if override is not None:
        return override, "set_backend"
    env = os.environ.get(_ENV, "").strip()
    if env:
        return _check_mode(env, f"environment variable {_ENV}"), "env"
    return "auto", "default"


def _check_kind(kind: str) -> None:
    if kind not in KERNELS:
        raise InvalidArgumentError(f"unknown kernel kind {kind!r}; expected one of {KERNELS}")


def _decide(kind: str) -> tuple[bool, str]:
    mode, source = get_backend()
    if mode == "xla":
        return False, f"xla forced ({source})"
    if mode == "pallas":
        how = "compiled" if not interpret() else "interpret mode: no GPU lowering on this backend"
        return True, f"pallas forced ({source}; {how})"
    platform = jax.default_backend()
    if platform != "gpu":
        return False, f"auto: backend is {platform!r}, kernels are only considered on 'gpu'"
    if gpu_lowering() is None:
        return False, "auto: this jax has no Triton lowering for Pallas"
    if kind not in MEASURED_FASTER:
        return False, "auto: not measured faster than XLA on a GPU (MEASURED_FASTER has no entry)"
    return True, f"auto: measured faster {MEASURED_FASTER[kind]}"


def use_pallas(kind: str) -> bool:
    """Whether the Pallas kernel ``kind`` (one of :data:`KERNELS`) should run here.

    Raises:
      InvalidArgumentError: an unknown ``kind``, or an unknown mode in ``MMSB_KERNELS``.
    """
    _check_kind(kind)
    return _decide(kind)[0]


@functools.cache
def gpu_lowering() -> str | None:
    """The GPU lowering the kernels in ``pallas_kernels`` use: ``"triton"``, or ``None`` where
    this jax has none (then ``auto`` keeps XLA everywhere)."""
    try:
        import jax.experimental.pallas.triton  # noqa: F401 - deprecated on jax 0.11, still there
    except ImportError:  # pragma: no cover - a jax without the Triton backend
        return None
    return "triton"


def interpret() -> bool:
    """The ``interpret=`` to pass a kernel: ``True`` off a GPU (or without its lowering)."""
    return not (jax.default_backend() == "gpu" and gpu_lowering() is not None)


def backend_report() -> dict:
    """The choice per kernel and why, for ``get_stats``: a JSON-serialisable dict."""
    mode, source = get_backend()
    kernels = {}
    for kind in KERNELS:
        use, why = _decide(kind)
        kernels[kind] = {"use_pallas": use, "reason": why, "measured": MEASURED_FASTER.get(kind)}
    return {
        "mode": mode,
        "source": source,
        "platform": jax.default_backend(),
        "jax_version": jax.__version__,
        "gpu_lowering": gpu_lowering(),
        "interpret": interpret(),
        "kernels": kernels,
    }
