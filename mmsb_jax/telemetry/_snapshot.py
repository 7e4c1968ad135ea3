"""The telemetry snapshot file: what a live state measured, for a second process to read.

A state with a directory of its own writes ``<path>/telemetry.json`` (JSON with a CRC-32C of
its content, replaced atomically, see ``log/_files.write_checked_json``): at most about once
per second, by one background thread per process (never on the caller's path), and once more
when the state closes. It holds the epoch it describes, the state's counters, the latency
histograms, propagation figures, the strategy's decisions and the replay throughput of the
last open. ``mmsb stats PATH`` combines it with what the files say; a damaged file is refused
and ignored. The file never decides what replay rebuilds: at open it only lends the counters
the log cannot recount (see :mod:`._counters`).

Imports ``log`` (the checked-JSON helpers) and nothing above the telemetry package.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

from .._errors import SerializationError
from ..log._files import read_checked_json, write_checked_json

SNAPSHOT_FILE = "telemetry.json"
FORMAT = "mmsb-telemetry"
INTERVAL = 1.0  # seconds between background snapshots of one state


def snapshot_path(path: str) -> str:
    return os.path.join(path, SNAPSHOT_FILE)


def write_snapshot(path: str, snapshot: dict) -> None:
    """Write ``snapshot`` (a dict of JSON values) as ``<path>/telemetry.json``, checked and atomic."""
    write_checked_json(snapshot_path(path), {"format": FORMAT, **snapshot})


def read_snapshot(path: str) -> dict | None:
    """The telemetry snapshot of the state at ``path``; ``None`` when there is none.

    Raises:
      SerializationError: the file is damaged or edited (its CRC fails), or not a snapshot.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> read_snapshot(d) is None
      True
      >>> write_snapshot(d, {"epoch": 3, "written_at": 0.0})
      >>> read_snapshot(d)["epoch"]
      3
    """
    file = snapshot_path(path)
    if not os.path.exists(file):
        return None
    snap = read_checked_json(file, "telemetry snapshot")
    if snap.get("format") != FORMAT or type(snap.get("epoch")) is not int or snap["epoch"] < 0:
        raise SerializationError(f"the telemetry snapshot {file!r} is not an {FORMAT} file with an epoch")
    return snap


class _Writer:
    """The process's snapshot thread: every ``INTERVAL`` s, each registered state's callback
    (held weakly) writes a snapshot if anything changed. Exits when no state is registered."""

    def __init__(self):
        self._lock = threading.Lock()
        self._refs: list = []
        self._thread: threading.Thread | None = None

    def register(self, method) -> None:
        with self._lock:
            self._refs.append(weakref.WeakMethod(method))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mmsb-telemetry-snapshots", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(INTERVAL)
            with self._lock:
                refs = [r for r in self._refs if r() is not None]
                self._refs = refs
                if not refs:
                    self._thread = None
                    return
            for r in refs:
                fn = r()
                if fn is None:
                    continue
                try:
                    if fn() is False:  # the state closed: forget it
                        with self._lock:
                            self._refs = [x for x in self._refs if x is not r]
                except Exception:  # noqa: BLE001, S110 - a snapshot is best effort; the next try may succeed
                    pass
                finally:
                    del fn


_WRITER = _Writer()


def snapshot_every_second(method) -> None:
    """Call ``method()`` (a bound method, held weakly) about once per second on the process's
    snapshot thread until it returns ``False``."""
    _WRITER.register(method)
