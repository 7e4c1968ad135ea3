"""The CLI's tree-journal commands: ``mmsb steps``, ``mmsb diff``, ``mmsb bisect`` (see
:mod:`mmsb_jax.cli`, which holds the parser and the shared helpers)."""

from __future__ import annotations

import argparse

import numpy as np
from rich.table import Table

from ._errors import InvalidArgumentError
from .cli import _snapshot, console


def cmd_steps(args) -> int:
    import collections

    import mmsb_jax as mmsb

    snap = _snapshot(args)
    steps = mmsb.tree_steps(snap, args.name)
    tree = snap._trees[args.name]
    pages = set(tree.page_ids.tolist())
    written = collections.defaultdict(lambda: [0, 0])  # epoch -> [leaves written, bytes]
    sources = {}
    for r in mmsb.query_log(args.path, kinds=["ROWS", "SPARSE", "TREE_STEP"]):
        if r.kind.name == "TREE_STEP":
            sources[r.epoch] = r.source
        elif r.page_id in pages:
            written[r.epoch][0] += 1
            written[r.epoch][1] += int(r.values.nbytes) + int(getattr(r, "rows", getattr(r, "indices", None)).nbytes)
    t = Table(title=f"tree {args.name!r}: {len(tree.spec.leaves)} leaves, {len(steps)} steps")
    for col in ("step", "epoch", "leaves written", "bytes written", "source"):
        t.add_column(col, justify="right" if col != "source" else "left")
    head, tail = args.limit - args.limit // 2, args.limit // 2  # the first and the last steps
    shown = steps if args.all or len(steps) <= args.limit else (
        steps[:head] + [None] + (steps[len(steps) - tail:] if tail else []))
    for row in shown:
        if row is None:
            t.add_row("...", "...", "", "", f"({len(steps) - head - tail} more; --all shows them)")
            continue
        step, epoch = row
        n, b = written.get(epoch, (0, 0))
        t.add_row(str(step), str(epoch), f"{n} / {len(tree.spec.leaves)}", f"{b:,}", sources.get(epoch, ""))
    console.print(t)
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive integer (at least 1)")
    return n


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def cmd_diff(args) -> int:
    import mmsb_jax as mmsb

    diff = mmsb.tree_diff(_snapshot(args), args.name, args.a, args.b)
    t = Table(title=f"tree {args.name!r}: step {args.a} -> {args.b}")
    for col in ("leaf", "shape", "dtype", "changed", "max |change|", "norm of change"):
        t.add_column(col, justify="left" if col in ("leaf", "dtype") else "right")
    total = 0
    for path, d in diff.items():
        size = int(np.prod(d["shape"], dtype=np.int64))
        total += d["changed"]
        t.add_row(path, str(list(d["shape"])), d["dtype"], f"{d['changed']:,} / {size:,}", _fmt(d["max_abs"]),
                  _fmt(d["norm"]))
    console.print(t)
    console.print(f"{total:,} elements changed in {sum(d['changed'] > 0 for d in diff.values())} of {len(diff)} leaves")
    return 0


def cmd_bisect(args) -> int:
    import mmsb_jax as mmsb
    from mmsb_jax.shell import any_nonfinite

    snap = _snapshot(args)
    loads = [0]
    if args.nonfinite:
        what = "a non-finite leaf"

        def predicate(tree):
            loads[0] += 1
            return any_nonfinite(tree)
    else:
        leaf = args.above[0]
        try:
            bound = float(args.above[1])
        except ValueError:
            raise InvalidArgumentError(f"--above {leaf} {args.above[1]!r}: the bound must be a number") from None
        if bound != bound:
            raise InvalidArgumentError(f"--above {leaf} {args.above[1]!r}: the bound must be a number, not NaN "
                                       "(no value is above NaN; --nonfinite finds NaNs)")
        what = f"max({leaf}) > {bound}"

        def predicate(tree):
            loads[0] += 1
            flat = {jax_keystr(p): x for p, x in _leaves_with_paths(tree)}
            if leaf not in flat:
                raise InvalidArgumentError(f"tree {args.name!r} has no leaf {leaf}; leaves: {sorted(flat)}")
            x = np.asarray(flat[leaf]).astype(np.float64)
            return bool((x[~np.isnan(x)] > bound).any())  # NaNs are not above anything

    steps = mmsb.tree_steps(snap, args.name)
    found = mmsb.find_step(snap, args.name, predicate)
    if found is None:
        console.print(f"the last step of tree {args.name!r} does not have {what} ({len(steps)} steps, "
                      f"{loads[0]} loads); bisection assumes that once a step has it, every later step has it too")
        return 1
    epoch = dict(steps)[found]
    console.print(f"first step with {what}: [bold]{found}[/bold] (epoch {epoch}); "
                  f"{loads[0]} loads by bisection over {len(steps)} steps")
    t = Table(title=f"leaves of {args.name!r} at step {found}")
    for col in ("leaf", "shape", "dtype", "NaN", "inf", "max |x|"):
        t.add_column(col, justify="left" if col in ("leaf", "dtype") else "right")
    for path, x in _leaves_with_paths(mmsb.load_tree(snap, args.name, step=found)):
        x = np.asarray(x)
        floating = x.dtype.kind == "f" or x.dtype.name == "bfloat16"
        xf = x.astype(np.float64)
        nan, inf = (int(np.isnan(xf).sum()), int(np.isinf(xf).sum())) if floating else (0, 0)
        finite = xf[np.isfinite(xf)] if floating else xf.reshape(-1)
        t.add_row(jax_keystr(path), str(list(x.shape)), x.dtype.name, str(nan), str(inf),
                  _fmt(float(np.max(np.abs(finite)))) if finite.size else "-")
    console.print(t)
    return 0


def _leaves_with_paths(tree):
    import jax

    return jax.tree_util.tree_flatten_with_path(tree)[0]


def jax_keystr(path) -> str:
    import jax

    return jax.tree_util.keystr(path)
