"""Durable small files: directory fsync, atomic JSON writes, and JSON with a CRC-32C.

Checkpoint manifests and a state directory's settings file decide what a replay does, so
they carry a checksum of their own content (``crc32c`` of the canonical JSON of every other
field): an edited or damaged file is refused instead of trusted.
"""

from __future__ import annotations

import json
import os
from typing import Any

import crc32c

from .._errors import SerializationError

CRC_FIELD = "crc32c"
MAX_JSON_BYTES = 16 * 1024 * 1024


def fsync_dir(path) -> None:
    """fsync a directory (so a rename or a new file in it is durable); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a temporary file, fsync, rename, dir fsync."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def _crc_of(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != CRC_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return f"{crc32c.crc32c(text.encode()):08x}"


def write_checked_json(path: str, obj: dict) -> None:
    """:func:`write_json_atomic` of ``obj`` plus a ``crc32c`` field over its other fields."""
    write_json_atomic(path, {**obj, CRC_FIELD: _crc_of(obj)})


def read_checked_json(path: str, what: str) -> dict:
    """Read a file written by :func:`write_checked_json`: a JSON object whose ``crc32c`` matches.

    Raises:
      SerializationError: missing or unreadable, larger than 16 MiB, not a JSON object, or its
        checksum is missing or does not match (the file was edited or damaged).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise SerializationError(f"cannot read the {what} {path!r}: {e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise SerializationError(f"the {what} {path!r} is larger than 16 MiB; refusing to parse it")
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise SerializationError(f"the {what} {path!r} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise SerializationError(f"the {what} {path!r} is a JSON {type(obj).__name__}, not an object")
    crc = obj.get(CRC_FIELD)
    if not isinstance(crc, str):
        raise SerializationError(f"the {what} {path!r} has no {CRC_FIELD} checksum")
    if crc != _crc_of(obj):
        raise SerializationError(f"the {what} {path!r} fails its {CRC_FIELD} checksum (edited or damaged)")
    return obj
