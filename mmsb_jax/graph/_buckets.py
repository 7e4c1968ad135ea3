"""Capacity buckets: how compiled sizes are rounded, so that edits inside a bucket keep every
shape (and hence every jitted program) of a compiled graph."""

from __future__ import annotations

def _ceil_ladder(n: int, minimum: int, parts: int) -> int:
    n = max(int(n), int(minimum))
    if n <= 2 * parts:
        return n
    e = n.bit_length() - 1  # 2**e <= n < 2**(e + 1)
    for q in range(parts, 2 * parts):
        v = -(-(q << e) // parts)  # ceil(q * 2**e / parts)
        if v >= n:
            return v
    return 2 << e


def ceil_quarter_pow2(n: int, minimum: int = 1) -> int:
    """``n`` rounded up to ``minimum`` or to the ladder ``2**e * (1, 1.25, 1.5, 1.75)`` above it.

    Exact up to 8, then at most 25% (on average ~11%) above ``n`` (8, 10, 12, 14, 16, 20, 24,
    28, 32, 40, ...), so a size can grow by a fifth before its bucket changes.

    Example:
      >>> [ceil_quarter_pow2(n) for n in (0, 3, 9, 17, 100)]
      [1, 3, 10, 20, 112]
    """
    return _ceil_ladder(n, minimum, 4)


def ceil_eighth_pow2(n: int, minimum: int = 1) -> int:
    """Like :func:`ceil_quarter_pow2` with eight rungs per power of two: exact up to 16, then
    at most 12.5% (on average ~6%) above ``n`` (16, 18, 20, ..., 30, 32, 36, 40, ...). For the
    step count, where every padded step costs a full step.

    Example:
      >>> [ceil_eighth_pow2(n) for n in (17, 100, 403)]
      [18, 104, 416]
    """
    return _ceil_ladder(n, minimum, 8)


def ceil_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def floor_pow2(n: int) -> int:
    """The largest power of two ``<= n`` (1 for ``n <= 1``)."""
    return 1 << (max(int(n), 1).bit_length() - 1)
