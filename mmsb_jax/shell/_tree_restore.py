"""Checking the trees of a checkpoint before a state takes them (as ``_restore`` does for pages).

A checkpoint holds each journaled tree's name and leaf pages (manifest) and its structure and
step -> epoch map (arrays, covered by the manifest's CRC-32Cs). They are cross-checked against
each other and against the checked page table: the structure parses, every leaf has a live
page of its shape and dtype, steps and epochs increase, no epoch is past the checkpoint's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import is_int
from .._errors import SerializationError
from ._tree_codec import TreeSpec, decode_structure


class CheckedTree(NamedTuple):
    name: str
    spec: TreeSpec
    page_ids: np.ndarray
    steps: list
    epochs: list


def check_checkpoint_trees(directory: str, manifest: dict, arrays: dict, checked) -> list[CheckedTree]:
    """The checkpoint's trees, checked against ``checked`` (its :class:`CheckedCheckpoint`).

    Raises:
      SerializationError: naming ``directory`` and the first inconsistency found.
    """

    def bad(msg):
        raise SerializationError(f"checkpoint {directory!r} is inconsistent: {msg}")

    entries = manifest.get("trees", [])
    if not isinstance(entries, list):
        bad(f"manifest field trees={entries!r} is not a list")
    held = arrays.get("trees") or {}
    if not isinstance(held, dict) or sorted(held) != sorted(f"tree_{i}" for i in range(len(entries))):
        bad(f"it holds tree arrays {sorted(held) if isinstance(held, dict) else held!r} for {len(entries)} trees")
    where = {pid: k for k, pid in enumerate(checked.ids.tolist())}
    out, names = [], set()
    for i, entry in enumerate(entries):
        name, pages = (entry.get("name"), entry.get("pages")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not name or name in names:
            bad(f"tree {i} has the name {name!r} (empty, repeated or not a str)")
        names.add(name)
        if not (isinstance(pages, list) and all(is_int(p) for p in pages)):
            bad(f"tree {name!r} lists pages {pages!r}")
        a = held[f"tree_{i}"]
        if not isinstance(a, dict) or sorted(a) != ["epochs", "steps", "structure"]:
            bad(f"tree {name!r} has arrays {sorted(a) if isinstance(a, dict) else a!r}")
        raw = np.asarray(a["structure"])
        if raw.dtype != np.uint8 or raw.ndim != 1:
            bad(f"tree {name!r} has a structure array of {raw.dtype}{raw.shape}")
        try:
            spec = decode_structure(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, SerializationError) as e:
            bad(f"tree {name!r}: {e}")
        if len(pages) != len(spec.leaves):
            bad(f"tree {name!r} has {len(spec.leaves)} leaves but {len(pages)} pages")
        for pid, leaf in zip(pages, spec.leaves):
            k = where.get(pid)
            pool = checked.pools[int(checked.pool[k])] if k is not None else None
            if pool is None or pool.shape != leaf.shape or pool.dtype != leaf.dtype:
                bad(f"tree {name!r} leaf {leaf.path} names page {pid}, which is not a live page of "
                    f"{leaf.dtype}{list(leaf.shape)}")
        steps, epochs = np.asarray(a["steps"]), np.asarray(a["epochs"])
        if (steps.ndim != 1 or steps.shape != epochs.shape or steps.size == 0 or steps.dtype.kind != "i"
                or epochs.dtype.kind != "i" or np.any(np.diff(steps) <= 0) or np.any(np.diff(epochs) <= 0)
                or int(epochs[0]) < 1 or int(epochs[-1]) > checked.epoch):
            bad(f"tree {name!r} has a malformed step map ({steps.size} steps, epochs up to "
                f"{int(epochs.max()) if epochs.size else None} of {checked.epoch})")
        out.append(CheckedTree(name, spec, np.asarray(pages, np.int64), steps.tolist(), epochs.tolist()))
    return out
