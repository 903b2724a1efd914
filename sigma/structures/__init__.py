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
=============  =========================================================  ==================

Every structure holds C over the weights a :class:`sigma.weights.Selection` picks (all of them
by default; P is then the number selected): which weights and how C is stored are two axes.
``"last_layer"`` is kept as a structure name for ``weights="last_layer", structure="full"``
(:data:`ALIASES`, :func:`resolve`).

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
from sigma.structures.base import Eigenbasis, Structure, fit_structure
from sigma.structures.diag import Diag
from sigma.structures.full import Full
from sigma.structures.kfac import KFAC
from sigma.structures.lowrank import LowRank
from sigma.weights import select

__all__ = [
    "KFAC",
    "Diag",
    "Eigenbasis",
    "Full",
    "LowRank",
    "Structure",
    "check_memory",
    "estimate",
    "fit_structure",
    "get",
    "resolve",
]

# Structure names kept for a combination of the two axes: name -> (weights, structure).
ALIASES = {"last_layer": ("last_layer", "full")}


def names() -> tuple[str, ...]:
    """The registered structure names."""
    return tuple(Structure.registry)


def get(name) -> type[Structure]:
    """The structure class registered under ``name`` (ValueError naming the choices)."""
    if isinstance(name, str) and name in ALIASES:
        name = ALIASES[name][1]
    cls = Structure.registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"structure must be one of {names() + tuple(ALIASES)}, got {name!r}")
    return cls


def resolve(structure, weights):
    """(structure, weights) with an alias like ``structure="last_layer"`` spelled out as its two
    axes (``weights="last_layer", structure="full"``); ValueError when the alias is combined
    with a ``weights=`` of its own."""
    if isinstance(structure, str) and structure in ALIASES:
        alias_weights, name = ALIASES[structure]
        if not (weights is None or isinstance(weights, str) and weights in ("all", alias_weights)):
            raise ValueError(
                f"structure={structure!r} means weights={alias_weights!r}, "
                f"structure={name!r}: give weights=... with another structure (e.g. "
                f"structure={name!r}) instead"
            )
        return name, alias_weights
    return structure, "all" if weights is None else weights


def _instance(structure, model, weights="all") -> Structure:
    """An unfitted structure over the selected weights, from a name (or alias) or instance."""
    structure, weights = resolve(structure, weights)
    s = get(structure)() if isinstance(structure, str) else structure
    if s.selection is None and not (isinstance(weights, str) and weights == "all"):
        s = s.on(select(model, weights))
    return s


def estimate(
    structure,
    model,
    *,
    n_data: int,
    n_outputs: int,
    batch_size=None,
    curvature: str = "ggn",
    weights="all",
) -> int | None:
    """Bytes ``structure`` (a name or an unfitted instance) needs to fit and predict for this
    model and ``weights`` (:mod:`sigma.weights`), N = ``n_data`` samples and K = ``n_outputs``;
    None when it cannot say."""
    value = _instance(structure, model, weights).memory_bytes(
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
    s = _instance(structure, model)
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
    candidates = {name: cls().on(s.selection) for name, cls in Structure.registry.items()}
    if s.selection is None or s.selection.full:
        candidates.update({alias: alias for alias in ALIASES})
    for name, candidate in candidates.items():
        if name == s.name:
            continue
        try:
            other = estimate(candidate, model, **kw)
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
        f"P={s.engine_for(model).n_params:,} weights ({what}), more than the limit of "
        f"{format_bytes(limit)} ({source}); {advice}. Choose one with structure=..., or raise "
        "the limit with max_memory=...",
        structure=s.name,
        needed=needed,
        limit=limit,
        fits=fits,
    )
