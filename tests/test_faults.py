"""Fault injection: damaged files, reordered and forged records, and SIGKILL at any moment.

Every case ends in one of two outcomes: ``mmsb_open`` raises an ``MMSBError`` (a
``CorruptLogError`` names the file and offset), or it opens a state equal, bit for bit, to the
live state at the epoch it reports (a replay of the intact prefix); and ``mmsb verify``
agrees: it passes only when the state opens complete and exact, and it fails whenever
opening fails. A bounded sample of every kind of damage runs with the suite; the whole
campaign (every byte of the last record, many more flips, 40 kills) runs with
``pytest -m slow`` and prints what it found.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import PEAK_RESET, run_and_kill

import mmsb_jax as mmsb
from mmsb_jax import CorruptLogError, MMSBError
from mmsb_jax.log import list_segments, read_records

F32 = np.float32


# --------------------------------------------------------------------------- the state under test
def build(path: Path) -> dict:
    """Every record kind, two pools, dependencies, a background and a blocking checkpoint;
    returns the live digest after every epoch."""
    digests = {}
    s = mmsb.mmsb_start(path, fsync="batch", segment_bytes=4096)

    def note():
        digests[s.epoch] = mmsb.state_digest(s)

    note()
    ids = [int(i) for i in mmsb.create_pages(s, 4, size=8, dtype=np.float32)]
    note()
    ints = [int(i) for i in mmsb.create_pages(s, 2, shape=(2, 3), dtype=np.int32)]
    note()
    mmsb.add_dependency(s, ids[0], ids[3], weight=2.0)
    note()
    mmsb.add_dependency(s, ids[1], ids[3])
    note()
    for i in range(1, 9):
        mmsb.update_page(s, ids[i % 3], np.full(8, i, F32))
        note()
    mmsb.checkpoint(s, block=False).result(60)
    for i in range(9, 15):
        mmsb.route_delta(s, ids[2], mmsb.sparse_delta([i % 8], np.array([float(i)], F32), 8))
        note()
    mmsb.batch_route_deltas(s, [(ids[0], mmsb.sparse_delta([1], np.array([9.0], F32), 8)),
                                (ints[0], mmsb.dense_delta(np.eye(2, 3, dtype=bool), np.ones((2, 3), np.int32))),
                                (ids[1], mmsb.accumulate_delta(np.ones(8, F32), "real"))])
    note()
    mmsb.route_sparse_batch(s, np.array(ints), np.array([[0, 5], [2, 3]]), np.array([[7, 8], [9, 10]], np.int32))
    note()
    mmsb.checkpoint(s)
    mmsb.remove_dependency(s, ids[1], ids[3])
    note()
    mmsb.delete_page(s, ids[2])
    note()
    for i in range(15, 90):
        mmsb.update_page(s, ids[i % 2], np.full(8, i, F32))
        note()
    mmsb.mmsb_stop(s)
    return digests


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "state"
    digests = build(path)
    assert len(list_segments(path / "log")) >= 3
    return path, digests


# --------------------------------------------------------------------------- damage
@dataclasses.dataclass
class Case:
    name: str
    file: str  # relative to the state directory
    damage: object  # callable(bytes) -> bytes
    tail: bool = False  # damage only inside the last unit of the log (a torn tail)


def flip(pos, mask=0x5A):
    def f(data):
        b = bytearray(data)
        b[pos % len(b)] ^= mask
        return bytes(b)

    return f


def zero(pos, n):
    def f(data):
        b = bytearray(data)
        p = pos % len(b)
        b[p : p + n] = bytes(len(b[p : p + n]))
        return bytes(b)

    return f


def cut(n):
    return lambda data: data[:n]


def files_of(path: Path) -> dict:
    """Relative path -> kind, for every file of the state."""
    out = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name == "tlog.lock":
            continue
        rel = str(p.relative_to(path))
        if rel.startswith("log/"):
            out[rel] = "segment"
        elif p.name == "manifest.json":
            out[rel] = "manifest"
        elif p.name == "mmsb-state.json":
            out[rel] = "settings"
        else:
            out[rel] = "orbax"
    return out


def units(path: Path):
    """[(segment file, start, end, epoch)] of every committed unit, in log order."""
    res = read_records(path / "log", "absolute", include_commit=True)
    segs = dict(list_segments(path / "log"))
    out, start = [], None
    for r in res.records:
        end = r.offset + len(_record_bytes(segs[r.segment], r.offset))
        if r.batched and start is None:
            start = r.offset
        if not r.batched or r.kind.name == "COMMIT":
            out.append((str(segs[r.segment].relative_to(path)), start if r.batched else r.offset, end, r.epoch))
            start = None
    return out


def _record_bytes(seg: Path, offset: int) -> bytes:
    with open(seg, "rb") as f:
        f.seek(offset)
        head = f.read(4)
        (length,) = np.frombuffer(head, "<u4")
        f.seek(offset)
        return f.read(int(length))


def cases(path: Path, rng: random.Random, per_file: int, every_tail_byte: bool) -> list[Case]:
    out = []
    kinds = files_of(path)
    all_units = units(path)
    last_seg, last_start, last_end, _ = all_units[-1]
    for rel, kind in kinds.items():
        size = (path / rel).stat().st_size
        if size == 0:
            continue
        positions = rng.sample(range(size), min(per_file, size))
        for p in positions:
            tail = rel == last_seg and p >= last_start
            out.append(Case(f"{kind}:{rel}:flip@{p}", rel, flip(p), tail))
        p = rng.randrange(size)
        out.append(Case(f"{kind}:{rel}:zero16@{p}", rel, zero(p, 16), rel == last_seg and p >= last_start))
        if kind != "segment":
            out.append(Case(f"{kind}:{rel}:truncate-half", rel, cut(size // 2)))
    size = (path / last_seg).stat().st_size
    cuts = range(last_start, size) if every_tail_byte else rng.sample(range(last_start, size), 4)
    for n in cuts:
        out.append(Case(f"segment:{last_seg}:truncate@{n}", last_seg, cut(n), True))
    return out


def reorder_cases(path: Path, rng: random.Random, n: int) -> list[Case]:
    """Swap two adjacent intact units, duplicate one, or drop one (CRC-valid edits)."""
    out = []
    all_units = units(path)
    pairs = [(a, b) for a, b in zip(all_units, all_units[1:]) if a[0] == b[0]]
    for a, b in rng.sample(pairs, min(n, len(pairs))):
        def swap(data, a=a, b=b):
            return data[: a[1]] + data[b[1] : b[2]] + data[a[1] : a[2]] + data[b[2] :]

        out.append(Case(f"swap epochs {a[3]},{b[3]}", a[0], swap, b is all_units[-1]))
    for u in rng.sample(all_units[:-1], min(n, len(all_units) - 1)):
        out.append(Case(f"duplicate epoch {u[3]}", u[0], lambda d, u=u: d[: u[2]] + d[u[1] : u[2]] + d[u[2] :]))
        out.append(Case(f"drop epoch {u[3]}", u[0], lambda d, u=u: d[: u[1]] + d[u[2] :]))
    return out


# --------------------------------------------------------------------------- the oracle
def check_case(src: Path, work: Path, digests: dict, case: Case) -> str:
    """Apply ``case`` to a copy of ``src`` and check the two-outcome rule; returns the outcome."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work)
    target = work / case.file
    target.write_bytes(case.damage(target.read_bytes()))
    final = max(digests)
    try:
        s = mmsb.mmsb_open(work)
    except MMSBError as e:
        opened = None
        if isinstance(e, CorruptLogError):
            assert e.path and e.offset >= 0, case.name
        outcome = "refused"
    else:
        try:
            opened = s.epoch
            assert mmsb.state_digest(s) == digests[opened], (case.name, opened)
        finally:
            s.close()
        # what opened is the whole state, or (damage in the last unit only) all but that unit
        assert opened == final or (case.tail and opened == final - 1), (case.name, opened, final)
        outcome = "exact" if opened == final else "intact prefix"
    # a damaged file (not only a torn tail) must not pass verification; restore the copy first:
    # opening may have repaired a torn tail or skipped a checkpoint
    shutil.rmtree(work)
    shutil.copytree(src, work)
    target.write_bytes(case.damage(target.read_bytes()))
    changed = target.read_bytes() != (src / case.file).read_bytes()
    rep = mmsb.verify_state(work)
    if rep["ok"]:
        assert opened == final, (case.name, rep)
    if opened is None:
        assert not rep["ok"], case.name
    if changed and not case.name.startswith("orbax"):
        # every changed byte of a log segment (all under a CRC), a manifest or the settings
        # file (checksummed JSON) is found; orbax files hold bytes no array depends on
        # (timestamps and the like), so for them only the two-outcome rule above applies
        assert not rep["ok"], (case.name, rep)
    return outcome


def run_campaign(src, digests, work, case_list) -> dict:
    counts: dict[str, int] = {}
    for case in case_list:
        outcome = check_case(src, work, digests, case)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def test_damage_sample(built, tmp_path):
    """A bounded sample of every kind of damage, in every kind of file."""
    src, digests = built
    rng = random.Random(0)
    case_list = cases(src, rng, per_file=1, every_tail_byte=False) + reorder_cases(src, rng, 3)
    counts = run_campaign(src, digests, tmp_path / "work", case_list)
    assert sum(counts.values()) == len(case_list) and counts.get("refused", 0) > 0


def campaign(root: Path) -> dict:
    """Every byte of the last record, ten flips per file, a dozen swaps/duplicates/drops."""
    src = root / "state"
    digests = build(src)
    rng = random.Random(1)
    case_list = cases(src, rng, per_file=10, every_tail_byte=True) + reorder_cases(src, rng, 12)
    counts = run_campaign(src, digests, root / "work", case_list)
    assert sum(counts.values()) == len(case_list)
    return {"cases": len(case_list), **counts}


@pytest.mark.slow
def test_damage_campaign(tmp_path):
    """The campaign, in a child process: no case may hang (a time limit) or allocate more than
    the files justify (its peak RSS is checked)."""
    code = PEAK_RESET + (
        f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path; import test_faults as t\n"
        f"out = t.campaign(Path({str(tmp_path)!r}))\n"
        "out['peak_rss_mb'] = peak_mb(); print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nfault campaign: {out} in {time.perf_counter() - t0:.0f} s")
    assert out["peak_rss_mb"] < 2048


# --------------------------------------------------------------------------- SIGKILL anywhere
CHILD = r"""
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import numpy as np
import mmsb_jax as mmsb

path, seed = sys.argv[1], int(sys.argv[2])
N = 16
s = mmsb.mmsb_start(path, fsync="always", segment_bytes=4096)
a = mmsb.create_page(s, size=N, dtype=np.int32).id      # epoch 1
b = mmsb.create_page(s, size=N, dtype=np.int32).id      # epoch 2
print("ACK 0 2", flush=True)
pending = None
i = 0
while True:
    i += 1
    if i % 3 == 0:
        e = mmsb.update_page(s, a, np.full(N, i, np.int32))
    elif i % 3 == 1:
        e = mmsb.route_delta(s, b, mmsb.sparse_delta([i % N], np.array([i], np.int32), N))
    else:
        e = mmsb.batch_route_deltas(s, [
            (a, mmsb.sparse_delta([i % N], np.array([-i], np.int32), N)),
            (b, mmsb.dense_delta((np.arange(N) % 3) == (i % 3), np.full(N, 2 * i, np.int32))),
        ])
    print(f"ACK {i} {e}", flush=True)
    if i % 25 == 7:
        pending = mmsb.checkpoint(s, block=False)  # a kill may land inside a background checkpoint
    if i % 60 == 30:
        mmsb.compact_log(s)  # ... or inside a compaction
"""


def child_model(i: int):
    a = np.zeros(16, np.int32)
    b = np.zeros(16, np.int32)
    for j in range(1, i + 1):
        if j % 3 == 0:
            a[:] = j
        elif j % 3 == 1:
            b[j % 16] = j
        else:
            a[j % 16] = -j
            b[(np.arange(16) % 3) == (j % 3)] = 2 * j
    return a, b


def kill_at(path: Path, seed: int, delay: float) -> list[tuple[int, int]]:
    lines = run_and_kill(CHILD, [path, seed], delay, started=lambda ls: sum(ln.startswith("ACK") for ln in ls) > 1)
    return [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("ACK")]


def check_kill(path: Path, seed: int, delay: float) -> None:
    acks = kill_at(path, seed, delay)
    last_i, last_e = acks[-1]
    assert all(e == i + 2 for i, e in acks)
    s = mmsb.mmsb_open(path)
    try:
        # nothing acknowledged is lost; at most the write in flight is there on top of it
        assert last_e <= s.epoch <= last_e + 1, (last_e, s.epoch)
        a, b = child_model(s.epoch - 2)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, 0)), a)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, 1)), b)
        snap = mmsb.replay_to_epoch(s, last_e)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, 0)), child_model(last_i)[0])
    finally:
        s.close()
    # once reopened (torn tail cut, interrupted checkpoints removed), the state verifies clean
    rep = mmsb.verify_state(path)
    assert rep["ok"], rep["faults"]


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_sample(tmp_path, seed):
    rng = random.Random(seed)
    check_kill(tmp_path / "s", seed, rng.uniform(0.2, 1.5))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 42))
def test_sigkill_campaign(tmp_path, seed):
    rng = random.Random(seed)
    check_kill(tmp_path / "s", seed, rng.uniform(0.0, 3.0))
