"""The interface every structure of the posterior precision A = α I + β C implements.

A structure holds the curvature C of the data term in some approximate form (docs/math.md,
"Structures") and answers the questions the rest of the package asks, whatever the form:

* ``eigenvalues`` — the eigenvalues of C (length r ≤ P; the P − r others are zero). The log
  evidence, ln|A| and the effective number of parameters γ follow from them for any α, β
  (:mod:`sigma.evidence`).
* ``predictive_variance(model, x, alpha, beta)`` — diag of J(x) A⁻¹ J(x)ᵀ per sample, (N, K).
* ``predictive_covariance(model, x, alpha, beta)`` — J(x) A⁻¹ J(x)ᵀ, (N, K, K).
* ``memory_bytes(model, ...)`` — what fitting and predicting will need, before any allocation.

Changing α or β never refits the curvature. What a structure can do beyond this is declared in
class attributes (``curvatures``, ``can_clip``), which
:class:`sigma.Laplace` reads before asking — never by trying and catching.

A new structure is one file: a subclass with a ``name`` registers itself under that name
(:data:`Structure.registry`), and one import line in :mod:`sigma.structures` makes it built in.
"""

from __future__ import annotations

import copy
import inspect
from typing import ClassVar

import numpy as np

from sigma._checks import has_non_finite
from sigma.curvature.engine import engine


class Structure:
    """Base class: a fitted curvature C in some structure.

    Class attributes (capabilities):

    name : the name ``Laplace(structure=...)`` takes; a subclass that sets it is registered.
    curvatures : the curvatures it can hold ("ggn", "ggn_mc": the GGN from sampled labels,
        "hessian").
    can_clip : can replace negative eigenvalues of C by zero (:meth:`clip_negative`).

    Precisions: ``alpha`` is a float, or the prior precision of each weight (P,) when the
    prior has several groups (:mod:`sigma.priors`); every method below takes either.
    """

    name: ClassVar[str | None] = None
    curvatures: ClassVar[tuple[str, ...]] = ("ggn", "ggn_mc")
    can_clip: ClassVar[bool] = False
    evidence_from_eigenvalues: bool = (
        True  # A = αI + βC is diagonal in C's eigenbasis (one α): the evidence
    )
    # follows from ``eigenvalues`` (False: from ``logdet`` and ``inverse_diagonal``)
    memory_summary: ClassVar[str] = "its curvature"  # what the memory holds, for messages
    registry: ClassVar[dict[str, type]] = {}
    # The weights C covers (a sigma.weights.Selection; None: every trainable weight). Set
    # before ``fit``/``restore``/``memory_bytes``; every method then works on those P_s weights.
    selection = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            Structure.registry[cls.name] = cls

    @classmethod
    def option_names(cls) -> list[str]:
        """The structure's options: the keywords of its constructor. Each is stored on the
        instance under its own name, so :meth:`options` (and saving) read them back."""
        params = inspect.signature(cls.__init__).parameters
        return [
            n
            for n, p in params.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def options(self) -> dict:
        """The options this instance was made with, ``{name: value}``: ``from_options`` of
        them makes the same structure (what :mod:`sigma.saving` records)."""
        return {name: getattr(self, name) for name in self.option_names()}

    @classmethod
    def from_options(cls, options=None) -> Structure:
        """An instance from ``structure_options``, checked against the constructor's keywords
        (a ValueError naming the unknown option and the ones the structure takes)."""
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(
                f"structure_options must be a dict of keyword arguments, got "
                f"{type(options).__name__}"
            )
        allowed = cls.option_names()
        unknown = [k for k in options if k not in allowed]
        if unknown:
            takes = f"it takes {', '.join(map(repr, allowed))}" if allowed else "it takes none"
            raise ValueError(
                f"structure_options {unknown} are not options of structure {cls.name!r}: {takes}"
            )
        return cls(**options)

    def fit(
        self,
        model,
        x,
        y,
        *,
        likelihood,
        curvature: str,
        batch_size: int | None,
        strategy=None,
        progress=None,
    ) -> Structure:
        """Accumulate C over (x, y) — arrays, or a ``tf.data.Dataset`` of (x, y) batches (then
        y is None) — under the ``tf.distribute`` ``strategy`` when given, with ``progress``
        bars (:mod:`sigma.progress`): ``curvature`` is one of :attr:`curvatures`; ``likelihood``
        a :mod:`sigma.likelihoods` object (it applies the root of the GGN's Λ_n = L_n L_nᵀ and
        says the precision groups, whose curvatures C_h the structure keeps apart when there
        are several: :meth:`combine`)."""
        raise NotImplementedError

    # -- precision groups: A = D_α + Σ_h β_h C_h ---------------------------------------------------
    groups = None  # the likelihood's precision groups (sigma.likelihoods.Groups), set by fit

    @property
    def n_groups(self) -> int:
        return 1 if self.groups is None else self.groups.n_groups

    def combine(self, beta) -> tuple[Structure, float]:
        """(structure, b) with A = D_α + b·C_structure at the precisions β (G,) of the groups:
        this structure and β itself for one group; for several, a one-group structure of the
        same kind holding Σ_h β_h C_h (made once per β and kept) and b = 1."""
        beta = np.atleast_1d(np.asarray(beta, np.float64))
        if self.n_groups == 1:
            return self, float(beta[0])
        return self.memo("combined", beta.tobytes(), lambda: self._combine(beta)), 1.0

    # -- memos: values derived from the fitted curvature, kept for the last key -----------------
    def memo(self, name: str, key, compute):
        """``compute()``, kept on this instance under ``name`` for the last ``key`` asked (the
        inverse blocks at one α, β; the curvature combined at one β). A :meth:`fresh_copy`
        starts with none, so no memo of one fit survives into another."""
        memos = self.__dict__.setdefault("_memos", {})
        hit = memos.get(name)
        if hit is None or hit[0] != key:
            hit = memos[name] = (key, compute())
        return hit[1]

    def fresh_copy(self) -> Structure:
        """A shallow copy of this structure without its memos."""
        new = copy.copy(self)
        new.__dict__.pop("_memos", None)
        return new

    def _combine(self, beta) -> Structure:
        """A one-group structure holding Σ_h β_h C_h (structures that keep groups apart)."""
        raise NotImplementedError(f"structure {self.name!r} keeps one precision group")

    def group_traces(self, alpha, beta) -> np.ndarray:
        """Tr(A⁻¹ C_h) per precision group, (G,), at α (a float or per weight) and β (G,): with
        β_h, the effective number of parameters each group's data determine (the evidence's
        γ_h = β_h Tr(A⁻¹ C_h))."""
        combined, b = self.combine(beta)
        if self.n_groups == 1:  # Tr(A⁻¹ βC) = P − Tr(A⁻¹ D_α)
            inv = combined.inverse_diagonal(alpha, b)
            alpha_w = np.broadcast_to(np.asarray(alpha, np.float64), inv.shape)
            return np.array([(self.n_params - float(alpha_w @ inv)) / b])
        return self._group_traces(combined, alpha)

    def _group_traces(self, combined, alpha) -> np.ndarray:
        raise NotImplementedError(f"structure {self.name!r} keeps one precision group")

    def on(self, selection) -> Structure:
        """A copy of this (unfitted) structure over the weights ``selection`` picks."""
        new = copy.copy(self)
        new.selection = selection
        return new

    def engine_for(self, model):
        """The curvature engine of ``model`` restricted to :attr:`selection`."""
        return engine(model, self.selection)

    def sibling(self, cls, *args, **kwargs) -> Structure:
        """A new structure of class ``cls`` over the same weights (e.g. lowrank's diagonal)."""
        return cls(*args, **kwargs).on(self.selection)

    def posterior_weights(self, model) -> np.ndarray:
        """The weights the posterior covers, (n_params,) in package order. E_W = ½‖·‖² in the
        evidence."""
        return self.engine_for(model).flat_weights()

    def check_prior(self, prior) -> None:
        """Raise ValueError when this structure cannot represent ``prior``'s groups exactly."""

    def inverse_diagonal(self, alpha, beta) -> np.ndarray:
        """diag(A⁻¹), (P,): with :meth:`logdet`, the evidence for any prior groups."""
        raise NotImplementedError

    def inverse_quadratic(self, v, alpha, beta) -> float:
        """vᵀA⁻¹v for a vector v (P,) of the posterior's weights (the distance to the mode,
        :func:`sigma.selection.mode_gap`)."""
        raise NotImplementedError(f"structure {self.name!r} does not define inverse_quadratic()")

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of C, shape (r,), r ≤ P (the remaining P − r are zero)."""
        raise NotImplementedError

    def logdet(self, alpha, beta: float) -> float:
        """ln|α I + β C| from the eigenvalues of C (one α)."""
        lam = self.eigenvalues
        return float(
            np.sum(np.log(alpha + beta * lam)) + (self.n_params - lam.size) * np.log(alpha)
        )

    def clearly_positive_definite(self, alpha: float, beta: float) -> bool:
        """True when A = αI + βC is certainly positive definite without an eigendecomposition
        (False: the caller looks at the eigenvalues)."""
        return False

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None) -> np.ndarray:
        cov = self.predictive_covariance(model, x, alpha, beta, batch_size=batch_size)
        return np.einsum("nkk->nk", cov)

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None) -> np.ndarray:
        raise NotImplementedError

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature) -> int | None:
        """Bytes needed to fit and predict (dominant terms), or None when unknown."""
        return None

    # Saving (sigma.saving): what a fitted structure is, without the data it was fitted on.
    def state(self) -> tuple[dict, dict]:
        """(arrays, info): the fitted state as float arrays and JSON-able facts."""
        raise NotImplementedError(f"structure {self.name!r} does not define state()")

    def restore(self, model, arrays: dict, info: dict) -> Structure:
        """This (unfitted) structure set to a saved state for ``model``; returns self."""
        raise NotImplementedError(f"structure {self.name!r} does not define restore()")

    # Serving (sigma.serving): the predictive variance inside a Keras graph.
    def export(self, model, alpha, beta) -> tuple[dict, dict]:
        """(arrays, spec) that :meth:`graph_variance` needs at these precisions: float64
        arrays (the layer's weights) and JSON-able facts."""
        raise NotImplementedError(f"structure {self.name!r} cannot be exported")

    @staticmethod
    def graph_variance(eng, spec: dict, arrays: dict, x):
        """Traceable: diag J(x) A⁻¹ J(x)ᵀ, (B, K) float64, from :meth:`export`'s arrays;
        ``eng`` is the model's curvature engine over the selected weights (``eng.model``,
        ``eng.selection``)."""
        raise NotImplementedError

    # Capabilities (see the class attributes).
    def clip_negative(self) -> None:
        """Replace negative eigenvalues of C by zero (C → its positive semi-definite part)."""
        raise NotImplementedError


class Eigenbasis(Structure):
    """A structure that keeps C = V diag(c) Vᵀ over its P weights (``_eig``, ``_vecs``) and
    yields J(x) V in batches (``_projected``): A⁻¹ = V diag(1/(α + β c)) Vᵀ, so
    J A⁻¹ Jᵀ = (J V) diag(1/(α + β c)) (J V)ᵀ."""

    def _projected(self, model, x, batch_size):
        raise NotImplementedError

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None):
        inv = 1.0 / (alpha + beta * self._eig)
        return np.concatenate(
            [np.einsum("nkp,p->nk", jv**2, inv) for jv in self._projected(model, x, batch_size)]
        )

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None):
        inv = 1.0 / (alpha + beta * self._eig)
        return np.concatenate(
            [
                np.einsum("nkp,p,njp->nkj", jv, inv, jv)
                for jv in self._projected(model, x, batch_size)
            ]
        )


def restore_groups(info, outputs):
    """The precision groups saved by a structure's ``state`` (None: files before groups)."""
    if info is None or outputs is None:
        return None
    from sigma.likelihoods import Groups

    return Groups(tuple(info["names"]), tuple(info["kinds"]), np.asarray(outputs, np.int64))


def fit_structure(
    structure, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=None
):
    """``structure.fit`` on arrays or a prepared ``tf.data.Dataset``, under ``strategy`` when
    given, on a fresh copy (a structure instance given twice, or already fitted, is never
    shared between two posteriors, and no memo of another fit survives)."""
    fitted = structure.fresh_copy().fit(
        model,
        x,
        y,
        likelihood=likelihood,
        curvature=curvature,
        batch_size=batch_size,
        strategy=strategy,
        progress=progress,
    )
    check_finite_curvature(fitted)
    return fitted


def check_finite_curvature(structure) -> None:
    """Raise when the fitted structure holds NaN or inf (the model's outputs were finite, so
    their gradients overflowed inside the network)."""
    bad = sorted(name for name, value in vars(structure).items() if has_non_finite(value))
    if bad:
        raise ValueError(
            f"the curvature of structure={structure.name!r} holds NaN or infinite values (in "
            f"{', '.join(bad)}) although the model's outputs on x are finite: the gradients "
            "overflow inside the network. Rescale x (or the weights), or compute in float64"
        )
