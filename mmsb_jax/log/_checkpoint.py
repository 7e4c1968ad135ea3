"""Checkpoints: plain orbax arrays plus a small JSON manifest.

A checkpoint directory holds::

    manifest.json   format, version, epoch, next page id, semiring, pools, log position
    arrays/         an orbax StandardCheckpointer tree:
                      {"pools": {"pool_<i>": (high_water, *shape) array, ...},
                       "page_table": {"pool": int32[n], "slot": int64[n], "epoch": int64[n]}}

``arrays/`` is restorable with orbax alone
(``orbax.checkpoint.StandardCheckpointer().restore(path / "arrays")``). The manifest is
written last and atomically (write to a temporary name, fsync, rename), so a directory whose
manifest exists holds a complete checkpoint; a crash mid-write leaves no manifest.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from .._errors import SerializationError
from ._files import read_checked_json, write_checked_json

FORMAT = "mmsb-checkpoint"
VERSION = 2  # 2: the manifest carries a crc32c of its own fields
MANIFEST = "manifest.json"
ARRAYS = "arrays"


def save_checkpoint(directory: str, manifest: dict, tree: dict) -> str:
    """Write ``tree`` with orbax and then ``manifest`` (atomically) into ``directory``.

    Raises:
      SerializationError: the directory exists and already holds a checkpoint, or orbax fails.
    """
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, MANIFEST)):
        raise SerializationError(f"{directory!r} already holds a checkpoint; choose a new directory")
    os.makedirs(directory, exist_ok=True)
    arrays = os.path.join(directory, ARRAYS)
    if os.path.exists(arrays):  # left over from a crashed attempt: no manifest, so not valid
        shutil.rmtree(arrays)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(arrays, tree)
        ckptr.wait_until_finished()
    except Exception as e:  # surface orbax errors as ours, never swallow them
        raise SerializationError(f"writing checkpoint arrays to {arrays!r} failed: {e}") from e
    finally:
        ckptr.close()
    checksums = {key: _crc(arr) for key, arr in _leaves(tree)}
    write_checked_json(
        os.path.join(directory, MANIFEST),
        {"format": FORMAT, "version": VERSION, **manifest, "checksums": checksums},
    )
    return directory


def read_manifest(directory: str) -> dict:
    """Read and check a checkpoint manifest.

    Raises:
      SerializationError: missing, unreadable, edited or damaged (its checksum does not match),
        or not an mmsb checkpoint of a known version.
    """
    path = os.path.join(directory, MANIFEST)
    manifest = read_checked_json(path, "checkpoint manifest")
    if manifest.get("format") != FORMAT:
        raise SerializationError(f"{path!r} is not an mmsb checkpoint manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise SerializationError(f"{path!r} has checkpoint version {manifest.get('version')!r}; expected {VERSION}")
    return manifest


def _leaves(tree, prefix=""):
    for k in sorted(tree):
        v = tree[k]
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)


def _crc(arr: np.ndarray) -> str:
    import crc32c

    return f"{crc32c.crc32c(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)):08x}"


def load_arrays(directory: str) -> dict:
    """Restore the orbax tree of a checkpoint as numpy arrays (host memory), checking each
    array against the CRC-32C the manifest recorded for it.

    Raises:
      SerializationError: orbax fails, or an array's bytes differ from what was written.
    """
    import orbax.checkpoint as ocp

    arrays = os.path.join(directory, ARRAYS)
    ckptr = ocp.StandardCheckpointer()
    try:
        tree = ckptr.restore(arrays)
    except Exception as e:
        raise SerializationError(f"restoring checkpoint arrays from {arrays!r} failed: {e}") from e
    finally:
        ckptr.close()
    tree = _to_numpy(tree)
    expected = read_manifest(directory).get("checksums")
    if not isinstance(expected, dict):
        raise SerializationError(f"checkpoint {directory!r} has no array checksums in its manifest")
    got = dict(_leaves(tree))
    if sorted(got) != sorted(expected):
        raise SerializationError(
            f"checkpoint {directory!r} holds arrays {sorted(got)}, but its manifest lists {sorted(expected)}"
        )
    for key, arr in got.items():
        if _crc(arr) != expected[key]:
            raise SerializationError(f"checkpoint {directory!r}: array {key!r} fails its CRC-32C check (corrupted)")
    return tree


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def is_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))
