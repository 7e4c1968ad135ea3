"""Semirings (Layer 2): records of pure functions that define how values combine."""

from .._errors import SemiringLawError as SemiringLawError
from ._base import Semiring as Semiring
from ._laws import (
    LAWS as LAWS,
    LawFailure as LawFailure,
    LawReport as LawReport,
    check_laws as check_laws,
)
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
]
