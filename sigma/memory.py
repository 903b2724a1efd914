"""Memory a structure needs, estimated before any large allocation, and a refusal that names a
structure that fits (instead of dying out of memory half-way through a fit).

:func:`estimate` gives the bytes a structure needs for P weights, N samples, K outputs and a
batch size — the dominant terms only (a structure class may define its own
``memory_bytes(model, *, n_data, n_outputs, batch_size, curvature)``; otherwise the formulas
below are used by its registry name). :func:`check` compares the estimate with a limit —
``max_memory`` if given, else a safety fraction of the memory available now (psutil, or
``/proc/meminfo``) — and raises :class:`InsufficientMemoryError` listing the registered
structures that do fit. :class:`sigma.Laplace` calls it before fitting.

=============  ==========================================================================
structure      dominant terms (8-byte floats unless the model's dtype is named)
=============  ==========================================================================
full           4 P² (C, its eigenvectors, the eigensolver's workspace) + a Jacobian batch
diag           4 P + a batch of layer inputs and sensitivities
kfac           3 Σ_layers (D_l² + C_l²) + generic blocks + a batch of inputs/sensitivities
lowrank        P (k + Lanczos steps) + a batch of activations (×8 for forward/reverse mode)
               + one predictive Jacobian chunk; as full when 2k + 1 > P (dense fallback)
last_layer     4 P_last² + a batch of features and of (D + 1) K² products
=============  ==========================================================================
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np

from sigma.curvature import ELEMENT_BUDGET as _BUDGET  # per-batch element caps
from sigma.layers import LAYER_BUDGET as _LAYER_BUDGET
from sigma.params import num_params

SAFETY = 0.8  # fraction of the available memory a fit may plan to use
_WHAT = {
    "full": "a P×P matrix and its eigendecomposition",
    "diag": "P diagonal entries and per-layer batch statistics",
    "kfac": "two Kronecker factors per layer",
    "lowrank": "k eigenvectors and the Lanczos basis, P floats each",
    "last_layer": "a P_last×P_last matrix over the final Dense layer",
}


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
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(
                f"max_memory must be a number of bytes or a string like '2GB', got {value!r}"
            )
        number, unit = float(m.group(1)), m.group(2).upper()
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
def _itemsize(model) -> int:
    return int(np.dtype(str(model.trainable_variables[0].dtype)).itemsize)


def _layers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]


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


def _last_dense_size(model) -> tuple[int, int]:
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


# -- estimates ----------------------------------------------------------------------------------
def _batch(n, per_sample, batch_size, budget=_BUDGET):
    if batch_size is not None:
        return max(1, int(batch_size))
    return int(max(1, min(n, budget // max(per_sample, 1))))


def _full(model, n, k, batch_size, curvature):
    p = num_params(model)
    per = k * p if curvature == "ggn" else 64 * p
    jac = _batch(n, per, batch_size) * per * 8 * 2
    return 4 * p * p * 8 + jac


def _diag(model, n, k, batch_size, curvature):
    act = activation_elements(model)
    per = 2 * (k + 1) * act
    return 4 * num_params(model) * 8 + _batch(n, per, batch_size, _LAYER_BUDGET) * per * 8


def _kfac(model, n, k, batch_size, curvature):
    blocks, other = kernel_blocks(model)
    factors = sum(3 * (d * d + c * c) for d, c in blocks) * 8
    generic = (other * other if other <= 2048 else 4 * other) * 8
    act = activation_elements(model)
    per = 2 * (k + 1) * act
    return factors + generic + _batch(n, per, batch_size, _LAYER_BUDGET) * per * 8


def _lowrank(model, n, k, batch_size, curvature, rank=20, max_steps=None):
    p = num_params(model)
    r = min(int(rank), p)
    if 2 * r + 1 > p:
        return _full(model, n, k, batch_size, curvature)
    steps = min(p, max(3 * r, r + 50)) if max_steps is None else min(p, int(max_steps))
    item = _itemsize(model)
    act = activation_elements(model)
    products = _batch(n, 8 * act, batch_size) * 8 * act * item
    predictive = max(min(_BUDGET, 4 * k * p), k * p) * item * 2
    return (steps + 2 * r + 4) * p * 8 + products + predictive


def _last_layer(model, n, k, batch_size, curvature):
    d1, kk = _last_dense_size(model)
    pl = d1 * kk
    per = d1 * kk * kk + activation_elements(model)
    return 4 * pl * pl * 8 + _batch(n, per, batch_size) * per * 8


_FORMULAS = {
    "full": _full,
    "diag": _diag,
    "kfac": _kfac,
    "lowrank": _lowrank,
    "last_layer": _last_layer,
}


def _instance(structure):
    from sigma.structures import STRUCTURES

    if isinstance(structure, str):
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {tuple(STRUCTURES)}, got {structure!r}")
        return STRUCTURES[structure]()
    return structure


def estimate(
    structure, model, *, n_data: int, n_outputs: int, batch_size=None, curvature: str = "ggn"
) -> int | None:
    """Bytes ``structure`` (a registry name or an unfitted instance) needs to fit and predict
    for this model, N = ``n_data`` samples and K = ``n_outputs``; None when unknown."""
    s = _instance(structure)
    own = getattr(s, "memory_bytes", None)
    if callable(own):
        value = own(
            model, n_data=n_data, n_outputs=n_outputs, batch_size=batch_size, curvature=curvature
        )
        if value is not None:
            return int(value)
    formula = _FORMULAS.get(getattr(s, "name", None))
    if formula is None:
        return None
    n, k = int(n_data), int(n_outputs)
    if s.name == "lowrank":
        return int(formula(model, n, k, batch_size, curvature, rank=s.rank, max_steps=s.max_steps))
    return int(formula(model, n, k, batch_size, curvature))


def check(
    structure,
    model,
    *,
    n_data: int,
    n_outputs: int,
    batch_size=None,
    curvature: str = "ggn",
    max_memory=None,
    safety: float = SAFETY,
) -> int | None:
    """Refuse a structure that would not fit; return its estimate in bytes (None if unknown).

    The limit is ``max_memory`` (bytes, or a string like "2GB") if given, else ``safety`` ×
    the memory available now (no check when neither is known). Raises
    :class:`InsufficientMemoryError` naming the registered structures that fit.
    """
    from sigma.structures import STRUCTURES

    s = _instance(structure)
    kw = dict(n_data=n_data, n_outputs=n_outputs, batch_size=batch_size, curvature=curvature)
    needed = estimate(s, model, **kw)
    if max_memory is not None:
        limit, source = (
            parse_bytes(max_memory),
            f"max_memory={format_bytes(parse_bytes(max_memory))}",
        )
    else:
        avail = available_bytes()
        if avail is None:
            return needed
        limit = int(safety * avail)
        source = f"{safety:.0%} of the {format_bytes(avail)} available"
    if needed is None or needed <= limit:
        return needed
    fits = {}
    for name, cls in STRUCTURES.items():
        if name == s.name:
            continue
        try:
            other = estimate(cls(), model, **kw)
        except Exception:  # noqa: BLE001 - a structure that cannot size itself is not offered
            continue
        if other is not None and other <= limit:
            fits[name] = other
    p = num_params(model)
    what = _WHAT.get(s.name, "its curvature")
    if fits:
        names = ", ".join(
            f"{n!r} (~{format_bytes(b)})" for n, b in sorted(fits.items(), key=lambda t: t[1])
        )
        advice = f"structures that fit: {names}"
    else:
        advice = "no registered structure fits; use fewer weights or a smaller batch_size"
    raise InsufficientMemoryError(
        f"structure={s.name!r} needs about {format_bytes(needed)} for P={p:,} weights ({what}), "
        f"more than the limit of {format_bytes(limit)} ({source}); {advice}. Choose one with "
        "structure=..., or raise the limit with max_memory=...",
        structure=s.name,
        needed=needed,
        limit=limit,
        fits=fits,
    )
