"""The structure of a journaled pytree as canonical JSON: written without code, read without imports.

A tree's structure (its containers, their keys, the leaf paths, shapes and dtypes) is logged
once, in its TREE_DEF record, as canonical JSON (``docs/tlog-format.md`` gives the schema).
Nothing is pickled and no module named in a file is ever imported: reading a structure back
rebuilds a namedtuple or registered pytree node as its own class only when that class is
already imported (found in ``sys.modules`` by its recorded name), registered as a pytree, and
gives its children the journaled keys in the journaled order (a dataclass whose fields were
renamed or reordered since would take the values by position, in the wrong fields); any other
node becomes the plain container with the same keys (a dict).

Why not ``jax.export``'s pytree serialization (``register_pytree_node_serialization``)? It
needs every namedtuple and custom node type registered by hand before anything is written
(optax states, flax ``struct`` dataclasses and ``nnx.State`` are not), its format is binary
flatbuffers (the ``flatbuffers`` package is not even installed here), and it has no fallback
for a reader that lacks the class. ``flax.nnx.graph.split`` keeps a ``GraphDef`` that holds
the classes themselves, which only pickle could persist. This codec keeps the idea both
share (a node kind, its keys, its auxiliary data, its children) in JSON, and rebuilds the
``PyTreeDef`` with jax's own ``PyTreeDef.from_node_data_and_children``.
"""

from __future__ import annotations

import json
import sys
import types
from typing import NamedTuple

import jax
import numpy as np

from .._errors import InvalidArgumentError, InvalidDeltaError, SerializationError
from ..log._encode import BadRecord, dtype_from_name

tu = jax.tree_util
FORMAT = "mmsb-tree"
VERSION = 1
MAX_DEPTH = 256
_MISSING = object()


class LeafSpec(NamedTuple):
    """One leaf of a tree: its key path (as ``jax.tree_util.keystr`` writes it), shape, dtype."""

    path: str
    shape: tuple
    dtype: np.dtype


class TreeSpec(NamedTuple):
    """A decoded structure: the JSON text, its node tree and its leaves in flatten order."""

    text: str
    root: dict
    leaves: tuple  # of LeafSpec


def canonical_json(obj) -> str:
    """Canonical JSON: sorted keys, no whitespace, no NaN/inf literals."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_namedtuple(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


# --------------------------------------------------------------------------- auxiliary data
def _aux(x, depth: int = 0):
    """``x`` as tagged JSON values, or ``_MISSING`` when it holds anything else."""
    if depth > 32:
        return _MISSING
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x if type(x) is int else _MISSING
    if type(x) is float:
        return x if np.isfinite(x) else {"float": repr(x)}
    if type(x) in (list, tuple):
        items = [_aux(v, depth + 1) for v in x]
        if any(v is _MISSING for v in items):
            return _MISSING
        return items if type(x) is list else {"tuple": items}
    return _MISSING


def _unaux(j, depth: int = 0):
    if depth > 32:
        raise ValueError("auxiliary data nested too deeply")
    if j is None or isinstance(j, (bool, str, int, float)):
        return j
    if isinstance(j, list):
        return [_unaux(v, depth + 1) for v in j]
    if isinstance(j, dict) and len(j) == 1:
        if "tuple" in j and isinstance(j["tuple"], list):
            return tuple(_unaux(v, depth + 1) for v in j["tuple"])
        if "float" in j and j["float"] in ("nan", "inf", "-inf"):
            return float(j["float"])
    raise ValueError(f"bad auxiliary data {j!r}")


_KEY_KINDS = {tu.DictKey: ("dict", "key"), tu.GetAttrKey: ("attr", "name"), tu.SequenceKey: ("index", "idx"),
              tu.FlattenedIndexKey: ("flat", "key")}
_KEY_TYPES = {"dict": tu.DictKey, "attr": tu.GetAttrKey, "index": tu.SequenceKey, "flat": tu.FlattenedIndexKey}


def _plain_key(k) -> bool:
    return type(k) is str or type(k) is int


def _key_entry(entry, path: str):
    kind, attr = _KEY_KINDS.get(type(entry), (None, None))
    value = getattr(entry, attr) if kind else None
    if kind is None or not _plain_key(value):
        raise InvalidArgumentError(f"the tree node at {path or 'the root'} has a child key {entry!r}; "
                                   "only str or int keys can be journaled")
    return [kind, value]


# --------------------------------------------------------------------------- encoding
def _encode_node(obj, td, path: str, depth: int) -> dict:
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"the tree is nested deeper than {MAX_DEPTH} levels at {path}")
    nd = td.node_data()
    if nd is None:
        return {"t": "leaf"}
    typ, aux = nd
    kids = td.children()
    if typ is types.NoneType:
        return {"t": "none"}
    if typ in (tuple, list):
        return {"t": typ.__name__, "c": [_encode_node(o, k, f"{path}[{i}]", depth + 1)
                                         for i, (o, k) in enumerate(zip(obj, kids))]}
    if typ is dict:
        keys = list(aux)
        for k in keys:
            if not _plain_key(k):
                raise InvalidArgumentError(f"dict key {k!r} at {path or 'the root'} is not a str or int; "
                                           "only str or int keys can be journaled")
        return {"t": "dict", "k": keys, "c": [_encode_node(obj[k], kd, f"{path}[{k!r}]", depth + 1)
                                              for k, kd in zip(keys, kids)]}
    if _is_namedtuple(typ) and aux is None:
        fields = list(typ._fields)
        return {"t": "namedtuple", "type": type_name(typ), "k": fields,
                "c": [_encode_node(getattr(obj, f), kd, f"{path}.{f}", depth + 1) for f, kd in zip(fields, kids)]}
    pairs, _ = tu.flatten_one_level_with_keys(obj)
    pairs = list(pairs)
    keys = [_key_entry(k, path) for k, _ in pairs]
    node = {"t": "custom", "type": type_name(typ), "k": keys,
            "c": [_encode_node(o, kd, path + tu.keystr((k,)), depth + 1) for (k, o), kd in zip(pairs, kids)]}
    j = _aux(aux)
    if j is not _MISSING:
        node["aux"] = j
    return node


def encode_structure(tree, treedef, leaves: list[LeafSpec]) -> str:
    """The canonical JSON structure of ``tree`` (flattened as ``treedef``) with its leaf specs.

    Raises:
      InvalidArgumentError: a dict key or child key that is not a str or int, or a tree nested
        deeper than 256 levels.
    """
    root = _encode_node(tree, treedef, "", 0)
    return canonical_json({
        "format": FORMAT, "version": VERSION, "root": root,
        "leaves": [{"path": s.path, "shape": list(s.shape), "dtype": s.dtype.name} for s in leaves],
    })


# --------------------------------------------------------------------------- decoding
def _bad(text_or_msg: str) -> SerializationError:
    return SerializationError(f"a tree structure in the log is malformed: {text_or_msg}")


def _check_node(node, depth: int) -> int:
    """Validate a decoded node; returns its number of leaves."""
    if depth > MAX_DEPTH:
        raise _bad(f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict) or not isinstance(node.get("t"), str):
        raise _bad(f"node {node!r:.80} has no kind")
    t = node["t"]
    if t == "leaf":
        return 1
    if t == "none":
        return 0
    c = node.get("c")
    if not isinstance(c, list):
        raise _bad(f"a {t} node has no children list")
    if t in ("dict", "namedtuple", "custom"):
        k = node.get("k")
        if not isinstance(k, list) or len(k) != len(c):
            raise _bad(f"a {t} node has {len(c)} children but keys {k!r:.80}")
        if t == "dict" and not all(_plain_key(x) for x in k):
            raise _bad("a dict node has a key that is not a str or int")
        if t == "namedtuple" and not all(type(x) is str for x in k):
            raise _bad("a namedtuple node has a field that is not a str")
        if t == "custom" and not all(isinstance(x, list) and len(x) == 2 and x[0] in _KEY_TYPES
                                     and _plain_key(x[1]) for x in k):
            raise _bad("a custom node has a malformed child key")
        if t != "dict" and not isinstance(node.get("type"), str):
            raise _bad(f"a {t} node has no type name")
    elif t not in ("tuple", "list"):
        raise _bad(f"unknown node kind {t!r}")
    return sum(_check_node(x, depth + 1) for x in c)


def decode_structure(text: str) -> TreeSpec:
    """Parse and validate a structure written by :func:`encode_structure`.

    Raises:
      SerializationError: not valid JSON of the schema, or leaves that disagree with the nodes.
    """
    if not isinstance(text, str):
        raise _bad(f"{type(text).__name__}, not a str")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _bad(f"not JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad("not an mmsb-tree document")
    if doc.get("version") != VERSION:
        raise _bad(f"version {doc.get('version')!r}, expected {VERSION}")
    raw = doc.get("leaves")
    if not isinstance(raw, list):
        raise _bad("no leaves list")
    n = _check_node(doc.get("root"), 0)
    if n != len(raw):
        raise _bad(f"{n} leaf nodes but {len(raw)} leaf specs")
    leaves = []
    for i, leaf in enumerate(raw):
        if not (isinstance(leaf, dict) and isinstance(leaf.get("path"), str) and isinstance(leaf.get("shape"), list)
                and all(type(d) is int and d >= 0 for d in leaf["shape"]) and isinstance(leaf.get("dtype"), str)):
            raise _bad(f"leaf spec {i} is malformed")
        try:
            dt = dtype_from_name(leaf["dtype"]).newbyteorder("=")
        except BadRecord as e:
            raise _bad(f"leaf {leaf['path']}: {e}") from None
        leaves.append(LeafSpec(leaf["path"], tuple(leaf["shape"]), dt))
    return TreeSpec(text, doc["root"], tuple(leaves))


# --------------------------------------------------------------------------- rebuilding
def _find_class(name: str):
    """The class recorded as ``module:QualName`` if its module is already imported; else None."""
    module, _, qual = name.partition(":")
    obj = sys.modules.get(module)
    if obj is None or not qual or "<" in qual:
        return None
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


_LEAF = tu.tree_structure(0)
_REG = tu.default_registry


def _make(node_data, children):
    return tu.PyTreeDef.from_node_data_and_children(_REG, node_data, children)


def _dict_of(keys, children):
    """A plain dict node; jax flattens dicts in sorted key order, so the children follow it
    (keys mixing str and int, which cannot be sorted, become strs)."""
    if len({type(k) for k in keys}) > 1:
        keys = [str(k) for k in keys]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return _make((dict, [keys[i] for i in order]), [children[i] for i in order])


def _child_keys(cls, node) -> list | None:
    """The child keys ``cls`` (with the node's aux) gives its children, in order, as the
    journal writes them (None: it cannot say). A class found by name is used only when they
    are the journaled keys: a dataclass whose fields were renamed or reordered since would
    otherwise take the values by position, in the wrong fields."""
    n = len(node["k"])
    try:
        probe = _make((cls, _unaux(node["aux"])), [_LEAF] * n).unflatten(list(range(n)))
        pairs, _ = tu.flatten_one_level_with_keys(probe)
        pairs = list(pairs)
        if [v for _, v in pairs] != list(range(n)):
            return None
        return [_key_entry(k, "") for k, _ in pairs]
    except Exception:  # noqa: BLE001 - a user class that cannot be probed is not trusted: a dict
        return None


def _build(node, plain: bool, notes: list):
    t = node["t"]
    if t == "leaf":
        return _LEAF
    if t == "none":
        return _make((types.NoneType, None), [])
    kids = [_build(c, plain, notes) for c in node["c"]]
    if t in ("tuple", "list"):
        return _make((tuple if t == "tuple" else list, None), kids)
    if t == "dict":
        try:
            return _make((dict, list(node["k"])), kids)
        except (TypeError, ValueError) as e:  # mixed str/int keys cannot be sorted
            raise _bad(f"dict keys {node['k']!r:.80}: {e}") from None
    keys = [k if t == "namedtuple" else k[1] for k in node["k"]]
    if not plain:
        cls = _find_class(node["type"])
        if t == "namedtuple" and _is_namedtuple(cls) and list(cls._fields) == node["k"]:
            return _make((cls, None), kids)
        if t == "custom" and cls is not None and "aux" in node:
            try:
                made = _make((cls, _unaux(node["aux"])), kids)
                if _child_keys(cls, node) == node["k"]:  # (a class of that name with other fields: a dict)
                    return made
            except (RuntimeError, TypeError, ValueError):
                pass  # not a registered pytree, or aux it does not take: a plain container
    notes.append(node["type"])
    if len(set(map(repr, keys))) != len(keys):
        raise _bad(f"a {node['type']} node has repeated keys {keys!r:.80}")
    return _dict_of(keys, kids)


def build_treedef(spec: TreeSpec, *, plain: bool = False):
    """A ``PyTreeDef`` for ``spec``; returns ``(treedef, names of nodes rebuilt as plain dicts)``.

    With ``plain=True`` every namedtuple and custom node becomes a dict of its keys.
    """
    notes: list = []
    return _build(spec.root, plain, notes), notes


def unflatten(spec: TreeSpec, leaves: list):
    """The tree of ``spec`` holding ``leaves``: its own node classes where they are imported and
    registered, else plain dicts (also when a class's own unflatten rejects what was logged)."""
    td, _ = build_treedef(spec)
    try:
        return tu.tree_unflatten(td, leaves)
    except Exception:  # noqa: BLE001 - a user's unflatten may raise anything: fall back to plain
        return tu.tree_unflatten(build_treedef(spec, plain=True)[0], leaves)


def check_like(spec: TreeSpec, like, name: str):
    """The treedef of template ``like`` after checking it has ``spec``'s leaf paths, shapes and
    dtypes; raises InvalidDeltaError naming the first leaf path that differs."""
    pairs, td = tu.tree_flatten_with_path(like)
    paths = [tu.keystr(p) for p, _ in pairs]
    want = [s.path for s in spec.leaves]
    if paths != want:
        diff = next((i for i, (a, b) in enumerate(zip(paths, want)) if a != b), min(len(paths), len(want)))
        got = paths[diff] if diff < len(paths) else "(no leaf)"
        exp = want[diff] if diff < len(want) else "(no leaf)"
        raise InvalidDeltaError(f"like= does not match tree {name!r}: leaf {diff} is {got}, the log has {exp} "
                                f"({len(paths)} leaves vs {len(want)})")
    for (_, leaf), s in zip(pairs, spec.leaves):
        shape, dtype = tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
        if shape != s.shape or dtype != s.dtype:
            raise InvalidDeltaError(f"like= leaf {s.path} of tree {name!r} is {dtype}{list(shape)}; "
                                    f"the log has {s.dtype}{list(s.shape)}")
    return td


def first_difference(paths: list, tree) -> str:
    """Where ``tree``'s leaf paths leave the journaled ``paths`` (for error messages)."""
    got = [tu.keystr(p) for p, _ in tu.tree_flatten_with_path(tree)[0]]
    for i, (x, y) in enumerate(zip(paths, got)):
        if x != y:
            return f"leaf {i} is {y or '(the root)'}, the journal has {x or '(the root)'}"
    if len(paths) != len(got):
        extra = got[len(paths)] if len(got) > len(paths) else paths[len(got)]
        return f"{len(got)} leaves vs {len(paths)} in the journal (first unmatched: {extra or '(the root)'})"
    return "the leaf paths agree but a container type or its static data differs"
