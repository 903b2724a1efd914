"""Amounts of memory: reading and writing them, what is available, what a step used, and the
sizes of a model's layers that the structures' estimates are made of.

Each structure estimates its own needs (``Structure.memory_bytes``: the dominant terms, e.g.
4 P² for ``full``, 3 Σ (D² + C²) for ``kfac``); :func:`sigma.structures.check_memory` compares
the estimate with a limit and raises :class:`InsufficientMemoryError` naming structures that
fit, before any large allocation.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np

from sigma import keras_compat
from sigma.params import num_params

SAFETY = 0.8  # fraction of the available memory a fit may plan to use


class InsufficientMemoryError(MemoryError):
    """A structure would need more memory than allowed; the message names structures that fit.

    Attributes: ``structure``, ``needed`` and ``limit`` (bytes), ``fits`` {name: bytes}.
    """

    def __init__(self, message, *, structure, needed, limit, fits):
        super().__init__(message)
        self.structure, self.needed, self.limit, self.fits = structure, needed, limit, fits


# -- reading and writing amounts of memory ------------------------------------------------------
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(value) -> int:
    """Bytes from a number or a string such as ``"500MB"``, ``"2 GiB"``, ``"1.5e9"``."""
    if isinstance(value, bool):
        raise ValueError(
            f"max_memory must be a number of bytes or a string like '2GB', got {value!r}"
        )
    if isinstance(value, int | float | np.integer | np.floating):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*", str(value))
        try:
            number, unit = float(m.group(1)), m.group(2).upper()
        except (AttributeError, ValueError):  # no match, or not a number ("1.5.3")
            number, unit = None, None
        if number is None or unit not in _UNITS:
            raise ValueError(
                f"max_memory must be a number of bytes or a string like '2GB' or '1.5 GiB', "
                f"got {value!r}"
            )
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(number * _UNITS[unit])


def format_bytes(n: float) -> str:
    """1536 → '1.5 kB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} PB"  # pragma: no cover


def available_bytes() -> int | None:
    """Memory available to this process now (psutil; else MemAvailable of /proc/meminfo)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unusable: fall back
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes() -> int:
    """Resident set size of this process (psutil; else /proc/self/statm; 0 if unknown)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        pass
    try:
        import resource

        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except (OSError, ImportError, IndexError, ValueError):
        return 0


class PeakMemory:
    """Context manager measuring the peak resident memory above the level at entry.

    ``with PeakMemory() as m: ...`` then ``m.bytes`` (and ``m.seconds``, the wall time). RSS is
    sampled every ``interval`` seconds by a thread. TensorFlow's allocator keeps memory it has
    freed, so a step that follows a larger one can show less than it really uses.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = float(interval)
        self.bytes, self.seconds = 0, 0.0

    def _watch(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, resident_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._base = self._peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._start
        self._peak = max(self._peak, resident_bytes())
        self.bytes = max(0, self._peak - self._base)
        return False


# -- model shapes -------------------------------------------------------------------------------
def itemsize(model) -> int:
    return int(np.dtype(str(model.trainable_variables[0].dtype)).itemsize)


def _layers(model):
    return keras_compat.layers(model)


def activation_elements(model) -> int:
    """Per-sample count of the values a forward pass produces (Σ over layers of their output
    sizes, plus the input), for sizing batches; from the layers' output shapes, or from
    their kernels' widths for a subclassed model."""
    total = 0
    for layer in _layers(model):
        try:
            shape = layer.output.shape
            total += int(np.prod([d for d in shape[1:] if d is not None]))
        except (AttributeError, ValueError, TypeError):
            kernel = getattr(layer, "kernel", None)
            total += int(kernel.shape[-1]) if kernel is not None else 0
    try:
        total += int(np.prod([d for d in model.inputs[0].shape[1:] if d is not None]))
    except (AttributeError, ValueError, TypeError, IndexError):
        pass
    return max(total, 1)


def kernel_blocks(model) -> tuple[list[tuple[int, int]], int]:
    """((D, C) per Dense/Conv layer with trainable kernel, bias-augmented D), other weights."""
    trainable = {id(v) for v in model.trainable_variables}
    blocks, covered = [], 0
    for layer in _layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or id(kernel) not in trainable:
            continue
        shape = tuple(int(d) for d in kernel.shape)
        bias = getattr(layer, "bias", None)
        d = int(np.prod(shape[:-1])) + (1 if bias is not None and id(bias) in trainable else 0)
        blocks.append((d, shape[-1]))
        covered += d * shape[-1]
    return blocks, num_params(model) - covered


def last_dense_size(model) -> tuple[int, int]:
    """(D + 1, K) of the last Dense layer with a trainable kernel (D + bias rows, K units)."""
    import keras

    dense = [
        la for la in _layers(model) if isinstance(la, keras.layers.Dense) and la.trainable_variables
    ]
    if not dense:
        return 0, 0
    layer = dense[-1]
    d, k = (int(s) for s in layer.kernel.shape)
    return d + (1 if layer.bias is not None else 0), k
