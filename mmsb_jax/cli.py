"""The ``mmsb`` command: ``demo``, ``bench``, ``inspect``, ``verify``, ``replay``, ``stats``, ``report``,
and the tree journal's ``steps``, ``diff`` and ``bisect``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ._errors import InvalidArgumentError

console = Console(width=None if sys.stdout.isatty() else 160)
_narrow = Console(width=100)  # the demo's and bench's tables and notes fit 100 columns


def _progress() -> Progress:
    """A transient progress bar in a terminal; none elsewhere (rich would write a blank line,
    e.g. before an error message)."""
    return Progress(console=console, transient=True, disable=not console.is_terminal)


# --------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """The quickstart end to end on a temporary state, with a summary table."""
    import jax.numpy as jnp
    import numpy as np

    import mmsb_jax as mmsb

    timings: dict[str, float] = {}
    rng = np.random.default_rng(0)

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    steps = 7
    with _progress() as progress:
        task = progress.add_task("mmsb demo", total=steps)
        state = mmsb.mmsb_start(path=args.path, fsync="batch")
        progress.advance(task)

        ids = timed("create 10k pages (1 KiB)", lambda: mmsb.create_pages(state, 10_000, size=1024))
        vec = mmsb.create_page(state, size=4, dtype=jnp.float32)
        progress.advance(task)

        def updates():
            for i in range(200):
                mmsb.update_page(state, int(ids[i]), rng.integers(0, 256, 1024, dtype=np.uint8))
            mmsb.update_page(state, vec.id, jnp.arange(4, dtype=jnp.float32))

        timed("200 update_page", updates)
        progress.advance(task)

        rows = rng.integers(0, ids.size, 100_000)
        ind = np.argsort(rng.random((1000, 1024)), axis=1)[:, :16].astype(np.int32)[rng.integers(0, 1000, 100_000)]
        vals = rng.integers(0, 256, (100_000, 16), dtype=np.uint8)
        timed("route 100k sparse deltas", lambda: mmsb.route_sparse_batch(state, ids[rows], ind, vals))
        timed("route 100k sparse deltas, again", lambda: mmsb.route_sparse_batch(state, ids[rows], ind, vals))
        mmsb.route_delta(state, vec.id, mmsb.sparse_delta([0], jnp.array([10.0], jnp.float32), 4))
        progress.advance(task)

        digest = mmsb.state_digest(state)
        ckpt = os.path.join(state.path, "demo-checkpoint")
        timed("checkpoint", lambda: mmsb.checkpoint(state, ckpt))
        progress.advance(task)

        reopened = timed("reopen (mmsb_open)", lambda: mmsb.mmsb_open(ckpt))
        same = mmsb.state_digest(reopened) == digest
        value = mmsb.query_page(reopened, vec.id).tolist()
        reopened.close()
        progress.advance(task)
        stats = mmsb.get_stats(state)
        mmsb.mmsb_stop(state)
        progress.advance(task)

    table = Table(title="mmsb demo")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("pages", f"{stats['pages']:,}")
    table.add_row("bytes", f"{stats['bytes']:,}")
    table.add_row("epochs", f"{stats['epoch']:,}")
    table.add_row("deltas routed", f"{stats['deltas_routed']:,}")
    table.add_row("page %d after reopen" % vec.id, str(value))
    table.add_row("reopened digest equal", "yes" if same else "NO")
    for name, secs in timings.items():
        table.add_row(f"time: {name} ({_COMPILES.get(name, 'first call: includes any compiling')})", f"{secs * 1e3:,.1f} ms")
    _narrow.print(table)
    _narrow.print("first calls include JAX compiling their programs; repeated calls do not "
                  "(compare the two route timings).")
    _narrow.print("next: [bold]mmsb bench --quick[/bold] (every case against its baseline, in this process), "
                  "or [bold]mmsb inspect PATH[/bold] on a state of your own")
    return 0 if same else 1


#: What each demo timing includes (the rest are first calls: they include compiling).
_COMPILES = {
    "200 update_page": "the first of them compiles",
    "route 100k sparse deltas, again": "compiled: no compiling",
}


# --------------------------------------------------------------------------- bench
def _benchmarks_package():
    """The benchmark modules: ``mmsb_jax.benchmarks`` in an installed package (setup.py ships
    the repository's ``benchmarks/`` under that name), else ``benchmarks/`` of the checkout."""
    try:
        return importlib.import_module("mmsb_jax.benchmarks")
    except ImportError:
        pass
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("benchmarks")
    except ImportError:
        return None


def _plot_bench(results, out) -> None:
    from .telemetry._plots import bench_plots

    for f in bench_plots(results, out):
        console.print(f"wrote {f}")


def _ratio_words(r: dict) -> str:
    """A result's ratio in the words of its target, always ours over the baseline's: "2.1x
    faster" (below 1: "0.55x the speed", never "0.55x faster"), "3.2x the time", "0.01x the size"."""
    means = r.get("ratio_means", "x faster than the baseline")
    ratio = r.get("ratio", r["ratio_vs_baseline"])
    if ratio is None:
        return "-"
    if "time" in means:
        return f"{ratio:.2f}x the time"
    if "faster" in means:
        return f"{ratio:.2f}x faster" if ratio >= 1 else f"{ratio:.2f}x the speed"
    return f"{ratio:.2f}x the size"


def _writable(option: str, path: Path, *, directory: bool) -> None:
    """Refuse an output path that cannot be written: a file where a directory is needed (or
    the reverse), or a file where one of its parent directories would be."""
    from ._checks import existing_part

    if path.is_dir() != directory and path.exists():
        raise InvalidArgumentError(f"{option}={str(path)!r} exists and is {'not ' if directory else ''}a directory")
    part = existing_part(path if directory else path.parent)
    if not os.path.isdir(part):  # (a file where a parent directory would be)
        raise InvalidArgumentError(f"{option}={str(path)!r} is below {part!r}, which is not a directory")
    probe = (path if directory else path.parent) / f".mmsb-bench-probe-{os.getpid()}"
    try:  # can a file be made there (e.g. not below /proc)? made, then removed
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise InvalidArgumentError(f"{option}={str(path)!r} cannot be written: {e.strerror or e}") from None


def _bench_table(results: list[dict], quick: bool) -> Table:
    """The results as a table that fits 100 columns (cells wrap; the JSON has every full name
    and field); a skipped case's reason is printed below it."""
    table = Table(title="mmsb bench" + (" (quick)" if quick else ""), expand=False)
    widths = {"case": (18, 30), "value": (8, 12), "baseline": (8, 12), "ratio": (9, 14), "target": (12, 24),
              "met": (3, 3)}
    for col, (least, most) in widths.items():
        table.add_column(col, justify="right" if col in ("value", "ratio") else "left", overflow="fold",
                         min_width=least, max_width=most)
    for r in results:
        if r.get("skipped"):  # its reason is printed below the table (cmd_bench)
            table.add_row(r["case"], "skipped", "-", "-", r.get("target", ""), "-")
            continue
        table.add_row(
            r["case"],
            f"{r['value']:.4g} {r['unit']}",
            f"{r['baseline_value']:.4g} {r.get('baseline_unit', r['unit'])}",
            _ratio_words(r),
            r["target"],
            "yes" if r["met"] else "NO",
        )
    return table


def cmd_bench(args) -> int:
    if args.from_json is not None:
        if args.plot is None:
            raise InvalidArgumentError(f"--from={args.from_json!r} needs --plot DIR")
        try:
            results = json.loads(Path(args.from_json).read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidArgumentError(f"--from={args.from_json!r} is not a results file of mmsb bench: {e}") from None
        _plot_bench(results, args.plot)
        return 0
    pkg = _benchmarks_package()
    if pkg is None:
        console.print("[red]no benchmarks: neither mmsb_jax.benchmarks (an installed package) nor a checkout's benchmarks/[/red]")
        return 2
    every = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_"))
    if args.only is not None and not all(args.only):
        raise InvalidArgumentError(f"--only {args.only!r}: an empty name matches every module; leave --only out instead")
    names = [n for n in every if any(o in n for o in args.only)] if args.only else every
    if not names:
        raise InvalidArgumentError(f"--only {' '.join(args.only)}: no benchmark module's name contains any of "
                                   f"these (the modules: {', '.join(every)})")
    out = Path(args.out)
    _writable("--out", out, directory=False)  # before the benchmarks run, not after
    if args.plot is not None:
        _writable("--plot", Path(args.plot), directory=True)
    results = []
    for name in names:
        console.print(f"[bold]{name}[/bold] ...")
        mod = importlib.import_module(f"{pkg.__name__}.{name}")
        t0 = time.perf_counter()
        rows = mod.run(quick=args.quick)
        for r in rows:
            r["module"] = name
        results.extend(rows)
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
    table = _bench_table(results, args.quick)
    _narrow.print(table)
    for r in results:
        if r.get("skipped"):
            _narrow.print(f"skipped: {r['case']}: {r['skipped']}")
    _narrow.print("baselines (same process, same run): " + "; ".join(
        dict.fromkeys(f"{r['baseline']}" for r in results if not r.get("skipped"))))
    out.parent.mkdir(parents=True, exist_ok=True)
    import jax

    meta = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    console.print(f"results written to {out}")
    if args.plot is not None:
        _plot_bench(results, args.plot)
    return 0


# --------------------------------------------------------------------------- state tools
def _kv_table(title: str, rows) -> Table:
    t = Table(title=title)
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(str(k), str(v))
    return t


def cmd_inspect(args) -> int:
    from ._tools import inspect_state

    info = inspect_state(args.path)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    rows = [
        ("log epochs", f"{info['first_epoch']} .. {info['last_epoch']}" if info["first_epoch"] is not None
         else "none (no log records)"),
        ("pages created / deleted in the log", f"{info['pages_created']:,} / {info['pages_deleted']:,}"),
        *[(f"records: {k}", f"{v:,}") for k, v in info["records_by_kind"].items()],
        ("segments", len(info["segments"])),
        *[(f"  {s['file']}", f"{s['bytes']:,} B") for s in info["segments"]],
        ("checkpoints", len(info["checkpoints"])),
        *[(f"  {c['dir']}", f"epoch {c['epoch']}") for c in info["checkpoints"]],
        ("log bytes", f"{info['log_bytes']:,}"),
        ("total bytes", f"{info['total_bytes']:,}"),
    ]
    if info["skipped_ranges"]:
        rows.append(("DAMAGED ranges", len(info["skipped_ranges"])))
    console.print(_kv_table(f"mmsb inspect {info['path']}", rows))
    return 0


def cmd_verify(args) -> int:
    from ._tools import verify_state

    with _progress() as progress:
        task = progress.add_task("verifying checkpoints", total=None)

        def tick(i, total, what):
            progress.update(task, total=total, completed=i)

        rep = verify_state(args.path, progress=tick, derive=_derive_fns(args))
    for c in rep["checkpoints"]:
        status = {True: "matches replay", False: "DIFFERS", None: "not comparable"}[c["matches_replay"]]
        if c.get("note"):
            status += f" ({c['note']})"
        console.print(f"checkpoint {c['dir']} (epoch {c['epoch']}): {status}")
    for note in rep.get("notes", ()):
        console.print(f"note: {note}")
    console.print(f"{rep['records']:,} log records checked" + (", every CRC valid" if rep["ok"] else " before the first fault"))
    for f in rep["faults"]:
        console.print(f"[red]FAULT[/red] {f}")
    console.print("[green]OK[/green]" if rep["ok"] else f"[red]{len(rep['faults'])} fault(s)[/red]")
    return 0 if rep["ok"] else 1


def cmd_replay(args) -> int:
    import mmsb_jax as mmsb
    from .log._checkpoint import check_new_directory

    if args.out:
        check_new_directory(args.out)  # before the replay, which may take long
    snap = mmsb.replay_to_epoch(args.path, args.epoch, derive=_derive_fns(args))
    stats = snap.stats()
    rows = [("epoch", snap.epoch), ("pages", f"{stats['pages']:,}"), ("bytes", f"{stats['bytes']:,}"),
            ("digest", snap.digest())]
    if args.out:
        rows.append(("checkpoint written", snap.checkpoint(args.out)))
    console.print(_kv_table(f"replay to epoch {args.epoch}", rows))
    return 0


def cmd_stats(args) -> int:
    import mmsb_jax as mmsb
    from ._errors import InvalidArgumentError
    from .telemetry._watch import files_stats, render, url_stats

    if not 0 < args.interval <= 86400:  # (NaN fails too)
        raise InvalidArgumentError(f"--interval={args.interval} must be > 0 and at most a day (86400)")
    if args.count is not None and args.count < 1:
        raise InvalidArgumentError(f"--count={args.count} must be at least 1")
    if args.path is None and args.url is None:
        raise InvalidArgumentError("mmsb stats needs a state directory PATH or --url URL")
    if args.watch:
        from rich.live import Live

        def view():
            if args.url:
                return render({"metrics": url_stats(args.url)}, f"mmsb stats {args.url}")
            return render(files_stats(args.path), f"mmsb stats {args.path}  ({time.strftime('%H:%M:%S')})")

        shown = 0
        with Live(view(), console=console, refresh_per_second=4, transient=False) as live:
            shown += 1
            while args.count is None or shown < args.count:
                time.sleep(args.interval)
                live.update(view())
                shown += 1
        return 0
    if args.url:
        print(json.dumps(url_stats(args.url), indent=1))
        return 0
    snap = mmsb.replay_to_epoch(args.path, None, derive=_derive_fns(args))
    stats = snap.stats()
    stats.pop("path", None)
    stats["files"] = files_stats(args.path)  # what a live state measured (its snapshot) and the files say
    print(json.dumps(stats, indent=1, default=str))
    return 0


def cmd_report(args) -> int:
    from .telemetry._plots import state_report

    for f in state_report(args.path, args.out):
        console.print(f"wrote {f}")
    return 0


# --------------------------------------------------------------------------- tree journal
def _snapshot(args):
    import mmsb_jax as mmsb

    return mmsb.replay_to_epoch(args.path, None, derive=_derive_fns(args))


def _derive_fns(args) -> dict:
    """``--derive NAME=MODULE:FUNCTION`` (repeatable): the functions of derived pages, imported
    because the caller named them (a state's files never make anything be imported)."""
    import importlib

    out = {}
    for spec in getattr(args, "derive", None) or ():
        name, sep, target = spec.partition("=")
        module, sep2, attr = target.partition(":")
        if not (sep and sep2 and name and module and attr):
            raise InvalidArgumentError(f"--derive {spec!r}: expected NAME=MODULE:FUNCTION")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise InvalidArgumentError(f"--derive {spec!r}: {e}") from None
        out[name] = fn
    return out


# --------------------------------------------------------------------------- main
_PATH_HELP = "a state's directory (as given to mmsb_start) or a checkpoint directory"


def build_parser() -> argparse.ArgumentParser:
    from ._cli_trees import _positive_int, cmd_bisect, cmd_diff, cmd_steps

    p = argparse.ArgumentParser(prog="mmsb", description="MMSB: a deterministic, delta-driven state store for JAX")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the quickstart end to end on a temporary state")
    d.add_argument("--path", default=None, help="state directory (default: a temporary one, removed after)")
    d.set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="run the benchmarks (each against its baseline) and write JSON")
    b.add_argument("--quick", action="store_true", help="smaller sizes, for a fast check")
    b.add_argument("--only", nargs="+", help="run only modules whose name contains one of these")
    b.add_argument("--out", default="bench-results/results.json", help="JSON output path")
    b.add_argument("--plot", nargs="?", const="bench-results/plots", default=None, metavar="DIR",
                   help="also write one PNG per benchmark family (default DIR: bench-results/plots)")
    b.add_argument("--from", dest="from_json", default=None, metavar="RESULTS.json",
                   help="with --plot: plot these results instead of running the benchmarks")
    b.set_defaults(fn=cmd_bench)
    i = sub.add_parser("inspect", help="epochs, pages, records per kind, segments, checkpoints, bytes")
    i.add_argument("path", help=_PATH_HELP)
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    v = sub.add_parser("verify", help="check every CRC and each checkpoint against a replay; exit 1 on any fault")
    v.add_argument("path", help=_PATH_HELP)
    v.set_defaults(fn=cmd_verify)
    r = sub.add_parser("replay", help="rebuild the state at an epoch (optionally write it as a checkpoint)")
    r.add_argument("path", help=_PATH_HELP)
    r.add_argument("--epoch", type=int, required=True)
    r.add_argument("--out", default=None, help="write the snapshot as a checkpoint directory")
    r.set_defaults(fn=cmd_replay)
    st = sub.add_parser("stats", help="telemetry of the latest state as JSON (--watch: live in the terminal)")
    st.add_argument("path", nargs="?", default=None, help="state directory (optional with --url)")
    st.add_argument("--watch", action="store_true", help="refresh a live view of the files and the telemetry snapshot")
    st.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    st.add_argument("--count", type=int, default=None, help="stop after this many refreshes (default: never)")
    st.add_argument("--url", default=None, help="read a live /metrics endpoint (mmsb.serve_metrics) instead")
    st.set_defaults(fn=cmd_stats)

    rp = sub.add_parser("report", help="PNG plots: epoch rate, log growth, checkpoint timeline, latencies")
    rp.add_argument("path", help=_PATH_HELP)
    rp.add_argument("--out", required=True, help="directory for the PNG files")
    rp.set_defaults(fn=cmd_report)
    s = sub.add_parser("steps", help="the journaled steps of a tree: step, epoch, what each wrote")
    s.add_argument("path", help=_PATH_HELP)
    s.add_argument("name", help="the tree's name (as given to mmsb.save_tree / tree_ring)")
    s.add_argument("--limit", type=_positive_int, default=20,
                   help="show this many steps, the first and the last half (default 20)")
    s.add_argument("--all", action="store_true", help="show every step")
    s.set_defaults(fn=cmd_steps)
    df = sub.add_parser("diff", help="per leaf of a tree: elements changed, max |change|, norm, between two steps")
    df.add_argument("path", help=_PATH_HELP)
    df.add_argument("name", help="the tree's name (as given to mmsb.save_tree / tree_ring)")
    df.add_argument("a", type=int, help="the step to compare from")
    df.add_argument("b", type=int, help="the step to compare to")
    df.set_defaults(fn=cmd_diff)
    bi = sub.add_parser("bisect", help="the first step of a tree where a condition holds (bisection over replay)")
    bi.add_argument("path", help=_PATH_HELP)
    bi.add_argument("name", help="the tree's name (as given to mmsb.save_tree / tree_ring)")
    cond = bi.add_mutually_exclusive_group(required=True)
    cond.add_argument("--nonfinite", action="store_true", help="a leaf holds a NaN or an infinity")
    cond.add_argument("--above", nargs=2, metavar=("LEAF", "VALUE"),
                      help="max of leaf LEAF (e.g. \"['loss']\") > VALUE (a number: 2.5, -1e3, -inf)")
    # VALUE may be negative: "-1e3" and "-inf" are numbers here, not options (argparse itself
    # takes only -5 and -.5 so)
    bi._negative_number_matcher = re.compile(r"^-(\d+\.?\d*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|inf|infinity|nan)$", re.I)
    bi.set_defaults(fn=cmd_bisect)
    for sp in (v, r, st, s, df, bi):
        sp.add_argument("--derive", action="append", metavar="NAME=MODULE:FUNCTION",
                        help="the function of derived pages logged as NAME (see mmsb.derive); repeatable")
    return p


def main(argv=None) -> int:
    from ._errors import CorruptLogError, MMSBError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except MMSBError as e:
        console.print(f"[red]error:[/red] {type(e).__name__}: {e}", soft_wrap=True)  # one line, never wrapped
        return 1 if isinstance(e, CorruptLogError) else 2  # a damaged state is a fault found, not a usage error


if __name__ == "__main__":
    sys.exit(main())
