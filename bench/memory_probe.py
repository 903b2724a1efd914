"""Memory probes shared by the bench scripts (standard library only): the current and peak
resident set size of this process, and the peak above a starting level while a block runs.

The same probe as :class:`sigma.memory.PeakMemory`, kept apart on purpose: bench/peer_torch.py
runs in the peer's environment (PyTorch, laplace-torch), which has neither sigma nor Keras, and
both libraries must be measured by the same code."""

from __future__ import annotations

import os
import resource
import threading
import time


def resident_bytes() -> int:
    """The current resident set size of this process (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes() -> int:
    """The peak resident set size of this process so far: VmHWM (Linux /proc), else ru_maxrss
    (which on Linux also counts the parent's size at the fork that started this process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.bytes``: the peak resident memory above the level
    at entry, sampled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.bytes = interval, 0

    def _watch(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, resident_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._base = self._peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = max(0, max(self._peak, resident_bytes()) - self._base)
        return False
