"""Capacity buckets: how compiled sizes are rounded, so that edits inside a bucket keep every
shape (and hence every jitted program) of a compiled graph."""

from __future__ import annotations

def ceil_quarter_pow2(n: int, minimum: int = 1) -> int:
    """``n`` rounded up to ``minimum`` or to the ladder ``ceil(2**(i/4))`` above it.

    Exact up to 8, then at most ~19% above ``n`` (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...),
    so a size can grow by a fifth before its bucket changes.

    Example:
      >>> [ceil_quarter_pow2(n) for n in (0, 3, 9, 17, 100)]
      [1, 3, 10, 20, 112]
    """
    n = max(int(n), int(minimum))
    if n <= 8:
        return n
    e = n.bit_length() - 1  # 2**e <= n < 2**(e + 1)
    for q in (4, 5, 6, 7):
        v = -(-(q << e) // 4)  # ceil(q * 2**e / 4)
        if v >= n:
            return v
    return 2 << e


def ceil_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def floor_pow2(n: int) -> int:
    """The largest power of two ``<= n`` (1 for ``n <= 1``)."""
    return 1 << (max(int(n), 1).bit_length() - 1)
