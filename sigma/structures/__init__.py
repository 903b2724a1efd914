"""Structures of the posterior precision A = α I + β C (docs/math.md, "Structures").

One file per structure, each a :class:`~sigma.structures.base.Structure` subclass that declares
what it can do and estimates the memory it needs:

=============  =========================================================  ==================
structure      C stored as                                                memory
=============  =========================================================  ==================
``full``       the P×P GGN or Hessian (:mod:`.full`); the reference        P²
``diag``       the exact diagonal of the GGN (:mod:`.diag`)                P
``kfac``       Q ⊗ H per Dense/Conv layer (:mod:`.kfac`)                    Σ (D² + C²)
``lowrank``    top-k eigenpairs by block Lanczos (:mod:`.lowrank`)          P·k
``last_layer`` the full curvature of the final Dense layer (:mod:`.last_layer`)  P_last²
=============  =========================================================  ==================

A new structure is one file (a subclass with a ``name``, which registers it) and one import
line below. :func:`get` finds a structure class by name; :func:`check_memory` refuses one that
would not fit before anything large is allocated.
"""

from __future__ import annotations

from sigma.memory import (
    SAFETY,
    InsufficientMemoryError,
    available_bytes,
    format_bytes,
    parse_bytes,
)
from sigma.params import num_params
from sigma.structures.base import Eigenbasis, Structure, fit_structure
from sigma.structures.diag import Diag
from sigma.structures.full import Full
from sigma.structures.kfac import KFAC
from sigma.structures.last_layer import LastLayer
from sigma.structures.lowrank import LowRank

__all__ = [
    "KFAC",
    "Diag",
    "Eigenbasis",
    "Full",
    "LastLayer",
    "LowRank",
    "Structure",
    "check_memory",
    "estimate",
    "fit_structure",
    "get",
]


def names() -> tuple[str, ...]:
    """The registered structure names."""
    return tuple(Structure.registry)


def get(name) -> type[Structure]:
    """The structure class registered under ``name`` (ValueError naming the choices)."""
    cls = Structure.registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"structure must be one of {names()}, got {name!r}")
    return cls


def _instance(structure) -> Structure:
    return get(structure)() if isinstance(structure, str) else structure


def estimate(
    structure, model, *, n_data: int, n_outputs: int, batch_size=None, curvature: str = "ggn"
) -> int | None:
    """Bytes ``structure`` (a name or an unfitted instance) needs to fit and predict for this
    model, N = ``n_data`` samples and K = ``n_outputs``; None when it cannot say."""
    value = _instance(structure).memory_bytes(
        model,
        n_data=int(n_data),
        n_outputs=int(n_outputs),
        batch_size=batch_size,
        curvature=curvature,
    )
    return None if value is None else int(value)


def check_memory(
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
    :class:`~sigma.memory.InsufficientMemoryError` naming the registered structures that fit.
    """
    s = _instance(structure)
    kw = dict(n_data=n_data, n_outputs=n_outputs, batch_size=batch_size, curvature=curvature)
    needed = estimate(s, model, **kw)
    if max_memory is not None:
        limit = parse_bytes(max_memory)
        source = f"max_memory={format_bytes(limit)}"
    else:
        avail = available_bytes()
        if avail is None:
            return needed
        limit = int(safety * avail)
        source = f"{safety:.0%} of the {format_bytes(avail)} available"
    if needed is None or needed <= limit:
        return needed
    fits = {}
    for name, cls in Structure.registry.items():
        if name == s.name:
            continue
        try:
            other = estimate(cls(), model, **kw)
        except Exception:  # noqa: BLE001 - a structure that cannot size itself is not offered
            continue
        if other is not None and other <= limit:
            fits[name] = other
    if fits:
        listed = ", ".join(
            f"{n!r} (~{format_bytes(b)})" for n, b in sorted(fits.items(), key=lambda t: t[1])
        )
        advice = f"structures that fit: {listed}"
    else:
        advice = "no registered structure fits; use fewer weights or a smaller batch_size"
    what = getattr(s, "memory_summary", "its curvature")
    raise InsufficientMemoryError(
        f"structure={s.name!r} needs about {format_bytes(needed)} for "
        f"P={num_params(model):,} weights ({what}), more than the limit of "
        f"{format_bytes(limit)} ({source}); {advice}. Choose one with structure=..., or raise "
        "the limit with max_memory=...",
        structure=s.name,
        needed=needed,
        limit=limit,
        fits=fits,
    )
