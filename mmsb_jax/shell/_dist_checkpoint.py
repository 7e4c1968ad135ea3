"""Checkpoints of a state spread over several JAX processes: orbax's multi-process save and
restore, with the manifest and its CRC-32Cs exactly as one process writes them.

**Save.** Every process hands orbax the same tree: each pool as a global ``jax.Array`` (a
device copy of its first ``max(high_water, 1)`` rows, padded with zero rows to whole shards:
JAX shards only evenly), so each process writes its own shards, and the page table and graph
as NumPy arrays (the same in every process; orbax's primary host, process 0, writes them).
orbax synchronises the processes with the coordination service's barriers (``active_processes``
set), never with an XLA collective, so the save can run on the state's writer thread while the
main thread goes on (at most one orbax save at a time per process, as in one process). Each
process then checksums the rows of its shards that are pages; process 0 puts each pool's
CRC-32C together from the parts (:func:`~mmsb_jax.log._crc.combine_parts`: the very value one
process computes over the whole array), writes the manifest, and tells the others; every
process's checkpoint finishes only then.

**Restore.** Pools are restored straight into the state's shardings (each process reads only
its shards; orbax pads or cuts the rows to the pool's capacity), checked by the same per-shard
CRCs put together and compared in every process, and their rows from ``high_water`` on are
zeroed; the rest is read as NumPy. A checkpoint written by N processes opens in one process
(:func:`~mmsb_jax.log._checkpoint.load_arrays` restores it as NumPy) and in any number of them.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import MMSBError, SerializationError
from ..log._checkpoint import (
    ARRAYS,
    checked_rows,
    leaves_by_key,
    packed,
    prepare_directory,
    restore_arrays,
    saved_leaves,
    unpacked,
    write_arrays,
    write_manifest,
)
from ..log._crc import array_crc, combine_parts, crc_hex
from ..pages import restore_capacity


def _is_global(x) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def _orbax_options(dist, ticket: str) -> dict:
    import orbax.checkpoint as ocp

    return {"multiprocessing_options": ocp.options.MultiprocessingOptions(
        active_processes=set(range(dist.count)),  # barriers over the coordination service
        barrier_sync_key_prefix=f"{dist.namespace.replace('/', '-')}-{ticket}",
    )}


# --------------------------------------------------------------------------- save
@functools.cache
def _head(sharding, rows: int):
    return jax.jit(lambda a: a[:rows], out_shardings=sharding)


def pool_rows(pool) -> jax.Array:
    """A device copy of the pool's first ``max(high_water, 1)`` rows, padded with zero rows
    (free slots past ``high_water`` are zeros) to whole shards."""
    return _head(pool.sharding, pool._round(max(pool.high_water, 1)))(pool.array)


def submit(state, directory: str, manifest: dict, tree: dict):
    """Prepare ``directory`` (process 0) and hand the save to the state's writer thread;
    returns its ``Future``. Every process calls it, in the same order."""
    dist = state._dist
    directory, _ = dist.everywhere(
        "checkpoint: prepare the directory",
        lambda: prepare_directory(directory) if dist.is_writer else os.path.abspath(directory),
    )
    ticket = f"ckpt{next(dist.tickets)}"
    tree, manifest = packed(tree, manifest)
    return state._ckpt_pool.submit(_write, dist, ticket, directory, manifest, tree)


def _write(dist, ticket: str, directory: str, manifest: dict, tree: dict) -> str:
    error = None
    try:
        write_arrays(os.path.join(directory, ARRAYS), tree, **_orbax_options(dist, ticket))
        parts = {key: _shard_crcs(arr, checked_rows(manifest, key)) for key, arr in leaves_by_key(tree) if _is_global(arr)}
    except SerializationError as e:
        error, parts = e, {}
    got = [json.loads(g) for g in dist.exchange(
        "checkpoint: checksums", json.dumps({"error": None if error is None else str(error), "parts": parts}),
        key=f"{ticket}/crc")]
    if error is not None:
        raise error
    failed = [(q, g["error"]) for q, g in enumerate(got) if g["error"] is not None]
    if failed:
        raise SerializationError(f"checkpoint {directory!r}: process {failed[0][0]} failed: {failed[0][1]}")
    status = ""
    if dist.is_writer:
        try:
            checksums = {}
            for key, arr in leaves_by_key(tree):
                if _is_global(arr):
                    rows = checked_rows(manifest, key) or arr.shape[0]
                    pieces = [tuple(p) for g in got for p in g["parts"][key]]
                    size = rows * int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
                    if sum(p[1] for p in pieces) != size:
                        raise SerializationError(f"checkpoint {directory!r}: the shards of {key!r} do not cover it")
                    checksums[key] = crc_hex(combine_parts(pieces))
                else:
                    checksums[key] = crc_hex(array_crc(np.asarray(arr)))
            write_manifest(directory, manifest, checksums)
        except (SerializationError, OSError, ValueError) as e:
            status = f"{type(e).__name__}: {e}"
    done = dist.exchange("checkpoint: manifest", status, key=f"{ticket}/done")
    if done[0]:
        raise SerializationError(f"process 0 could not finish checkpoint {directory!r}: {done[0]}")
    return directory


def _shard_crcs(arr: jax.Array, rows: int | None) -> list:
    """``[[byte offset, length, crc], ...]`` of this process's shards' rows below ``rows``."""
    rows = arr.shape[0] if rows is None else rows
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    out = []
    for shard in arr.addressable_shards:
        if shard.replica_id != 0:
            continue
        start = shard.index[0].start or 0
        stop = min(shard.index[0].stop if shard.index[0].stop is not None else arr.shape[0], rows)
        if stop > start:
            data = np.asarray(shard.data)[: stop - start]
            out.append([start * row_bytes, int(data.nbytes), array_crc(data)])
    return out


# --------------------------------------------------------------------------- restore
@functools.cache
def _zero_from(sharding):
    def keep(a, high_water):
        live = (jnp.arange(a.shape[0]) < high_water).reshape((-1,) + (1,) * (a.ndim - 1))
        return jnp.where(live, a, jnp.zeros((), a.dtype))

    return jax.jit(keep, out_shardings=sharding)


def load(state, directory: str, manifest: dict) -> dict:
    """Restore a checkpoint's tree for ``state``: pools into their shardings, the rest as
    NumPy, every array checked against the manifest's CRC-32C (see the module docstring).
    Every process calls it, in the same order, and all reach the same verdict.

    Raises:
      SerializationError: orbax fails here or in another process, the manifest does not
        describe the arrays, or an array fails its checksum.
    """
    error, tree, parts = None, {}, {}
    try:
        tree = _restore(state, directory, manifest)
        for key, arr in leaves_by_key(tree):
            if _is_global(arr):
                parts[key] = _shard_crcs(arr, checked_rows(manifest, key))
    except SerializationError as e:
        error = e
    got = [json.loads(g) for g in state._dist.exchange(
        "restore a checkpoint: checksums", json.dumps({"error": None if error is None else str(error), "parts": parts}))]
    if error is not None:
        raise error
    failed = [(q, g["error"]) for q, g in enumerate(got) if g["error"] is not None]
    if failed:
        raise SerializationError(f"checkpoint {directory!r} cannot be restored in process {failed[0][0]}: {failed[0][1]}")
    expected = manifest.get("checksums")
    if not isinstance(expected, dict) or sorted(expected) != sorted(k for k, _ in leaves_by_key(tree)):
        raise SerializationError(f"checkpoint {directory!r}: its manifest's checksums do not list its arrays")
    out = {}
    for key, arr in leaves_by_key(tree):
        rows = checked_rows(manifest, key)
        if _is_global(arr):
            crc = combine_parts([tuple(p) for g in got for p in g["parts"][key]])
            arr = _zero_from(arr.sharding)(arr, np.int32(_high_water(manifest, key)))
        else:
            arr = np.asarray(arr)
            crc = array_crc(arr if rows is None else arr[:rows])
        if crc_hex(crc) != expected[key]:
            raise SerializationError(f"checkpoint {directory!r}: array {key!r} fails its CRC-32C check (corrupted)")
        node = out
        *path, leaf = key.split("/")
        for k in path:
            node = node.setdefault(k, {})
        node[leaf] = arr
    return unpacked(out, manifest, directory)


def _high_water(manifest: dict, key: str) -> int:
    return int(manifest["pools"][int(key[len("pools/pool_"):])]["high_water"])


def _restore(state, directory: str, manifest: dict) -> dict:
    """orbax restore with a target: pools of the state's mesh as ``ShapeDtypeStruct`` with
    their sharding and capacity rows, everything else as NumPy."""
    meta = saved_leaves(directory)
    descs = manifest.get("pools")
    pools = meta.get("pools") if isinstance(meta, dict) else None

    def target(tree, prefix=""):
        return {k: target(v, f"{prefix}{k}/") if isinstance(v, dict) else leaf(f"{prefix}{k}", v)
                for k, v in tree.items()}

    def leaf(key, m):
        host = np.empty(tuple(m.shape), np.dtype(m.dtype))
        if not key.startswith("pools/pool_") or not isinstance(descs, list) or pools is None:
            return host
        try:
            d = descs[int(key[len("pools/pool_"):])]
            hw, location = int(d["high_water"]), d["location"]
            sharding = state._pool_sharding(state._device_for(location)[1])
        except (KeyError, IndexError, TypeError, ValueError, MMSBError):
            return host  # check_checkpoint names what is wrong
        if sharding is None or not 0 <= hw or max(hw, 1) > m.shape[0]:
            return host  # not on the mesh, or inconsistent (check_checkpoint refuses it)
        rows = restore_capacity(hw, len(sharding.device_set))
        return jax.ShapeDtypeStruct((rows, *m.shape[1:]), np.dtype(m.dtype), sharding=sharding)

    return restore_arrays(directory, target(meta), strict=False, **_orbax_options(state._dist, f"restore{state._dist.seq}"))
