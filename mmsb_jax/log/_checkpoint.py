"""Checkpoints: plain orbax arrays plus a small JSON manifest.

A checkpoint directory holds::

    manifest.json   format, version, epoch, next page id, semiring, pools, counters, checksums
    log_resume.json where the state's log went on after the checkpoint (a hint: see
                    :func:`read_resume`); absent for a checkpoint of several processes
    arrays/         an orbax StandardCheckpointer tree:
                      {"pools": {"pool_<i>": (high_water, *shape) array, ...},
                       "tables": uint8[...]}
                    ``tables`` packs every smaller array (the epoch, the page table
                    ``page_table/{id,pool,slot,epoch}``, the dependencies ``graph/...``, the
                    trees' ``trees/tree_<i>/{structure,steps,epochs}``) into one, as the
                    manifest's ``tables`` lists them (:mod:`._tables`: orbax pays for each
                    array it restores). Version 2 checkpoints hold
                    them as arrays of their own, and are read as they are.

``arrays/`` is restorable with orbax alone
(``orbax.checkpoint.StandardCheckpointer().restore(path / "arrays")``; a checkpoint written by
several processes, whose pools name the devices they came from, with a target tree:
``restore(path / "arrays", target)``, e.g. NumPy arrays of the shapes ``metadata`` gives, or
``jax.ShapeDtypeStruct`` with shardings). The manifest is
written last and atomically (write to a temporary name, fsync, rename), so a directory whose
manifest exists holds a complete checkpoint; a crash mid-write leaves no manifest.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from .._checks import not_a_directory
from .._errors import SerializationError
from ._crc import array_crc, crc_hex
from ._files import read_checked_json, write_checked_json
from ._report import ResumePoint
from ._tables import leaves_by_key, pack_tables, unpack_tables

FORMAT = "mmsb-checkpoint"
VERSION = 3  # 2: the manifest carries a crc32c of its own fields; 3: the small arrays are packed
READABLE = (2, 3)
MANIFEST = "manifest.json"
ARRAYS = "arrays"
RESUME = "log_resume.json"


def save_checkpoint(directory: str, manifest: dict, tree: dict, resume: ResumePoint | None = None) -> str:
    """Write ``tree`` with orbax, the ``resume`` hint if given, and then ``manifest``
    (atomically) into ``directory``.

    Raises:
      SerializationError: the directory exists and already holds a checkpoint, or orbax fails.
    """
    directory = prepare_directory(directory)
    tree, manifest = packed(tree, manifest)
    write_arrays(os.path.join(directory, ARRAYS), tree)
    if resume is not None:
        write_checked_json(os.path.join(directory, RESUME), {"epoch": int(manifest["epoch"]), **resume._asdict()})
    write_manifest(directory, manifest, {key: crc_hex(array_crc(arr)) for key, arr in leaves_by_key(tree)})
    return directory


def packed(tree: dict, manifest: dict) -> tuple[dict, dict]:
    """``tree`` with its small arrays packed into one (:mod:`._tables`), and ``manifest``
    with their layout: what a checkpoint of this version writes."""
    tree, layout = pack_tables(tree)
    return tree, {**manifest, "tables": layout}


def unpacked(tree: dict, manifest: dict, directory: str) -> dict:
    """The checked arrays of a checkpoint in their groups (a version 2 checkpoint holds them
    unpacked)."""
    if manifest.get("version") == 2:
        return tree
    if "tables" not in manifest:
        raise SerializationError(f"checkpoint {directory!r}: its manifest has no 'tables' (the packed arrays' layout)")
    return unpack_tables(tree, manifest["tables"], directory)


def read_resume(directory: str, epoch: int) -> ResumePoint | None:
    """The log position a checkpoint of ``epoch`` recorded as where its log went on, or
    ``None`` (no hint, a damaged one, or one written for another epoch). Only a hint: a read
    given it checks that the segment is still the one it names (its header's creation stamp)
    and that intact records follow, else reads the segment from its start."""
    path = os.path.join(directory, RESUME)
    if not os.path.isfile(path):
        return None
    try:
        obj = read_checked_json(path, "log resume point")
        point = ResumePoint(*(obj[k] for k in ResumePoint._fields))
    except (SerializationError, KeyError):
        return None
    if obj.get("epoch") != epoch or not all(type(v) is int and v >= 0 for v in point):
        return None
    return point


#: What a checkpoint attempt that crashed before its manifest can leave in its directory (the
#: arrays, orbax's temporary directories beside them, the resume hint, temporary JSON files):
#: exactly these names, nothing that merely starts like them (``arrays.bak`` is the user's).
_LEFTOVERS = (ARRAYS, RESUME, RESUME + ".tmp", MANIFEST + ".tmp")
_ORBAX_TMP = ARRAYS + ".orbax-checkpoint-tmp"


def _leftover(directory: str, name: str) -> bool:
    if name.startswith(_ORBAX_TMP):
        return True
    if name == ARRAYS:  # a directory of its own: not a file, not a link to someone else's
        path = os.path.join(directory, name)
        return os.path.isdir(path) and not os.path.islink(path)
    return name in _LEFTOVERS


def check_new_directory(directory: str) -> str:
    """Check that a checkpoint can be written into ``directory``, without touching anything;
    returns it as an absolute path. It may be absent (it is created, with its parents), empty,
    or hold only what a crashed checkpoint attempt left.

    Raises:
      SerializationError: it exists and is not a directory; a part of its path is a file; it
        already holds a checkpoint; or it holds anything else (a state's root or log, a home
        directory), which a checkpoint would be written in among.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, MANIFEST)):
        raise SerializationError(f"{directory!r} already holds a checkpoint; choose a new directory")
    if os.path.isdir(directory):
        other = sorted(e for e in os.listdir(directory) if not _leftover(directory, e))
        if other:
            shown = ", ".join(repr(e) for e in other[:3]) + (", ..." if len(other) > 3 else "")
            raise SerializationError(
                f"{directory!r} is not empty (it holds {shown}); a checkpoint needs a new or an "
                "empty directory"
            )
        return directory
    what = not_a_directory(directory)
    if what is not None:
        raise SerializationError(f"{directory!r} {what}")
    return directory


def make_directory(directory: str) -> str:
    """Create ``directory`` (and its parents) if it is absent; returns it.

    Raises:
      SerializationError: it cannot be made (e.g. below /proc, a name too long).
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise SerializationError(f"cannot create the checkpoint directory {directory!r}: {e.strerror or e}") from None
    return directory


def prepare_directory(directory: str) -> str:
    """Make ``directory`` ready for a new checkpoint (removing arrays a crashed attempt left);
    returns it as an absolute path.

    Raises:
      SerializationError: see :func:`check_new_directory`, or it cannot be created.
    """
    directory = make_directory(check_new_directory(directory))
    arrays = os.path.join(directory, ARRAYS)
    if os.path.exists(arrays):  # left over from a crashed attempt: no manifest, so not valid
        shutil.rmtree(arrays)
    return directory


def write_arrays(arrays: str, tree: dict, **options) -> None:
    """Save ``tree`` with orbax's ``StandardCheckpointer`` (``options``: its constructor's, e.g.
    ``multiprocessing_options`` for a save by several processes, each writing its shards).

    Raises:
      SerializationError: orbax fails.
    """
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer(**options)
    try:
        ckptr.save(arrays, tree)
        ckptr.wait_until_finished()
    except Exception as e:  # surface orbax errors as ours, never swallow them
        raise SerializationError(f"writing checkpoint arrays to {arrays!r} failed: {e}") from e
    finally:
        ckptr.close()


def write_manifest(directory: str, manifest: dict, checksums: dict) -> None:
    """Write the manifest (with the arrays' CRC-32Cs) atomically: the checkpoint is complete."""
    write_checked_json(
        os.path.join(directory, MANIFEST),
        {"format": FORMAT, "version": VERSION, **manifest, "checksums": checksums},
    )


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
    if manifest.get("version") not in READABLE:
        raise SerializationError(f"{path!r} has checkpoint version {manifest.get('version')!r}; expected one of "
                                 f"{', '.join(map(str, READABLE))}")
    return manifest


def checked_rows(manifest: dict, key: str) -> int | None:
    """How many leading rows of the array ``key`` its checksum covers: for a pool, the pages
    its manifest entry counts (at least one); ``None`` (all of it) for every other array.

    A checkpoint written by several processes holds its pools padded with zero rows to whole
    shards (JAX shards only evenly); the padding is not checksummed and never restored."""
    if not key.startswith("pools/pool_"):
        return None
    try:
        desc = manifest["pools"][int(key[len("pools/pool_"):])]
        return max(int(desc["high_water"]), 1)
    except (KeyError, IndexError, TypeError, ValueError):
        return None  # a manifest that does not say: check_checkpoint refuses it


def saved_leaves(directory: str) -> dict:
    """The orbax metadata tree of a checkpoint's arrays (shapes, dtypes, shardings)."""
    import orbax.checkpoint as ocp

    arrays = os.path.join(directory, ARRAYS)
    ckptr = ocp.StandardCheckpointer()
    try:
        return ckptr.metadata(arrays).item_metadata.tree
    except Exception as e:
        raise SerializationError(f"reading the metadata of checkpoint arrays {arrays!r} failed: {e}") from e
    finally:
        ckptr.close()


def restore_arrays(directory: str, target=None, *, strict: bool = True, **options) -> dict:
    """Restore a checkpoint's orbax tree (``target``: orbax's abstract tree, e.g. shardings to
    restore into; ``strict=False`` pads or truncates to the target's shapes).

    Raises:
      SerializationError: orbax fails.
    """
    import orbax.checkpoint as ocp

    arrays = os.path.join(directory, ARRAYS)
    ckptr = ocp.StandardCheckpointer(**options)
    try:
        return ckptr.restore(arrays) if target is None else ckptr.restore(arrays, target, strict=strict)
    except Exception as e:
        raise SerializationError(f"restoring checkpoint arrays from {arrays!r} failed: {e}") from e
    finally:
        ckptr.close()


def load_arrays(directory: str) -> dict:
    """Restore the orbax tree of a checkpoint as numpy arrays (host memory), checking each
    array against the CRC-32C the manifest recorded for it.

    Raises:
      SerializationError: orbax fails, or an array's bytes differ from what was written.
    """
    manifest = read_manifest(directory)

    def restore_as_numpy():
        # arrays that several processes wrote name their devices: restore them as numpy here
        meta = saved_leaves(directory)
        sharded = any(getattr(m, "sharding", None) is not None for m in _meta_leaves(meta))
        return restore_arrays(directory, _numpy_target(meta) if sharded else None)

    try:  # as one process wrote it (reading orbax's metadata first would cost ~25 ms)
        tree = _to_numpy(restore_arrays(directory))
    except SerializationError:  # e.g. shards placed on another process's devices
        tree = _to_numpy(restore_as_numpy())
    expected = manifest.get("checksums")
    if not isinstance(expected, dict):
        raise SerializationError(f"checkpoint {directory!r} has no array checksums in its manifest")
    got = dict(leaves_by_key(tree))
    if sorted(got) != sorted(expected):
        raise SerializationError(
            f"checkpoint {directory!r} holds arrays {sorted(got)}, but its manifest lists {sorted(expected)}"
        )
    for key, arr in got.items():
        rows = checked_rows(manifest, key)
        if crc_hex(array_crc(arr if rows is None else arr[:rows])) != expected[key]:
            raise SerializationError(f"checkpoint {directory!r}: array {key!r} fails its CRC-32C check (corrupted)")
    return unpacked(tree, manifest, directory)


def _meta_leaves(meta):
    if isinstance(meta, dict):
        for v in meta.values():
            yield from _meta_leaves(v)
    else:
        yield meta


def _numpy_target(meta):
    if isinstance(meta, dict):
        return {k: _numpy_target(v) for k, v in meta.items()}
    return np.empty(tuple(meta.shape), np.dtype(meta.dtype))


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def is_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))
