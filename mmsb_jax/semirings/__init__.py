"""Semirings (Layer 2): records of pure functions that define how values combine.

A :class:`Semiring` is a NamedTuple of jittable functions (⊕, ⊗, a segment reduction, a
reduction) and static tags, defined on every page dtype where it makes sense: bool,
int8-int64, uint8-uint64 and float16 / bfloat16 / float32 / float64, following
SuiteSparse:GraphBLAS's built-in semirings (:data:`CARRIER_TABLE` lists each standard
record's zero and one per kind of dtype, and where and why this package differs).
:func:`check_laws` checks a record's laws on sample values of any carrier dtype.

This layer imports only ``mmsb_jax._errors`` and ``mmsb_jax._compat`` (and jax / numpy).
"""

from .._errors import SemiringLawError as SemiringLawError
from ._base import Semiring as Semiring
from ._carriers import (
    CARRIER_DTYPES as CARRIER_DTYPES,
    CARRIER_TABLE as CARRIER_TABLE,
    cast_weights as cast_weights,
    weights_to_carrier as weights_to_carrier,
)
from ._laws import check_laws as check_laws
from ._report import LAWS as LAWS, LawFailure as LawFailure, LawReport as LawReport
from ._standard import (
    BOOLEAN as BOOLEAN,
    LOG as LOG,
    MAX_PLUS as MAX_PLUS,
    MAX_TIMES as MAX_TIMES,
    REAL as REAL,
    STANDARD as STANDARD,
    TROPICAL as TROPICAL,
    get_semiring as get_semiring,
    soft_tropical as soft_tropical,
)

__all__ = [
    "Semiring",
    "REAL",
    "TROPICAL",
    "MAX_PLUS",
    "BOOLEAN",
    "LOG",
    "MAX_TIMES",
    "STANDARD",
    "soft_tropical",
    "get_semiring",
    "check_laws",
    "LawReport",
    "LawFailure",
    "LAWS",
    "SemiringLawError",
    "CARRIER_DTYPES",
    "CARRIER_TABLE",
    "cast_weights",
    "weights_to_carrier",
]
