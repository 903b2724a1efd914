"""Every structure on one trained model: σ against the full-matrix σ, held-out calibration,
the evidence, time and memory (used by ``notebooks/04_bigger_networks.py``).

For each structure :func:`compare_structures` fits a :class:`sigma.Laplace` (timing it and
sampling the process's peak resident memory), sets α (and β) to that structure's own evidence
optimum and scores its predictive on held-out data — coverage and Gaussian NLL for regression,
accuracy, NLL, Brier and ECE for classification. A structure refused by the memory check is
recorded as such, with its estimate. Then all structures are put at one common α, β (the
reference structure's optimum) so that their weight-uncertainty σ = sqrt(diag J A⁻¹ Jᵀ) on the
held-out inputs can be compared with the reference's: the relative error |σ − σ_full| / σ_full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sigma import metrics
from sigma.evidence import EvidenceError
from sigma.laplace import Laplace
from sigma.memory import InsufficientMemoryError, PeakMemory
from sigma.structures import Structure


@dataclass
class Comparison:
    """rows: one dict per structure (status "ok", "refused" or "failed"; times in s, memory in
    MB); sigmas: {structure: (N_test, K) weight-uncertainty σ at the common α, β};
    alpha, beta: those common precisions; notes: {structure: message} for refusals/failures."""

    rows: list[dict]
    sigmas: dict[str, np.ndarray] = field(repr=False)
    alpha: float | None
    beta: float | None
    notes: dict[str, str]


def compare_structures(
    model,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    likelihood: str = "regression",
    structures=None,
    options: dict | None = None,
    reference: str = "full",
    curvature: str = "ggn",
    batch_size: int | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    evidence: dict | None = None,
    max_memory=None,
    progress: bool = False,
) -> Comparison:
    """Fit, optimise the evidence of and score each structure; compare σ with ``reference``.

    structures : names (default: every registered structure name), or {label: name} to compare
        one structure under several options, e.g. ``{"lowrank": "lowrank", "lowrank pure":
        "lowrank"}`` with ``options={"lowrank pure": {"rank": 20, "diag": False}}``; rows,
        σ and notes are then keyed by label.
    options : {name or label: structure_options}, e.g. ``{"lowrank": {"rank": 20}}``.
    reference : the structure whose evidence optimum sets the common α, β and whose σ the
        others are compared with (when it fits; otherwise the first that was fitted sets α, β
        and there is no relative error).
    alpha, beta : the precisions each structure starts from; ``evidence`` : keywords for
        :meth:`Laplace.optimize_evidence`, e.g. ``{"fix_beta": True}`` to keep a known β.
    """
    names = list(Structure.registry) if structures is None else list(structures)
    kinds = dict(structures) if isinstance(structures, dict) else {name: name for name in names}
    options = options or {}
    regression = likelihood == "regression"
    rows, notes, fitted = [], {}, {}
    for name in names:
        row = {"structure": name}
        rows.append(row)
        try:
            with PeakMemory() as fit_mem:
                la = Laplace(
                    model,
                    x_train,
                    y_train,
                    likelihood=likelihood,
                    curvature=curvature,
                    structure=kinds[name],
                    structure_options=options.get(name),
                    batch_size=batch_size,
                    alpha=alpha,
                    beta=beta if regression else 1.0,
                    max_memory=max_memory,
                    progress=progress,
                )
        except InsufficientMemoryError as err:
            row.update(status="refused", estimate_MB=err.needed / 1e6)
            notes[name] = str(err)
            continue
        except ValueError as err:  # a structure that refuses this model or curvature
            row.update(status="failed")
            notes[name] = str(err)
            continue
        row.update(
            status="ok",
            P=la.n_params,
            eigenvalues=int(la.structure.eigenvalues.size),
            fit_s=fit_mem.seconds,
            fit_peak_MB=fit_mem.bytes / 1e6,
            estimate_MB=None if la.memory_estimate is None else la.memory_estimate / 1e6,
        )
        try:
            la.optimize_evidence(**(evidence or {}))
        except (EvidenceError, ValueError) as err:
            notes[name] = f"evidence not optimised ({err}); α, β left at their start values"
        row.update(alpha=la.alpha, gamma=la.gamma, log_evidence=la.log_evidence())
        if regression:
            row["beta"] = la.beta
        with PeakMemory() as pred_mem:
            if regression:
                mean, std = la.predict(x_test, batch_size=batch_size)
                scores = metrics.regression_metrics(mean, std, y_test)
            else:
                scores = metrics.classification_metrics(la.predict_proba(x_test), y_test)
        row.update(predict_s=pred_mem.seconds, predict_peak_MB=pred_mem.bytes / 1e6, **scores)
        fitted[name] = la

    common = fitted.get(reference) or next(iter(fitted.values()), None)
    alpha = beta = None
    sigmas = {}
    if common is not None:
        alpha, beta = common.alpha, (common.beta if regression else None)
        for name, la in fitted.items():
            if regression:
                la.beta = beta
            la.alpha = alpha
            cov = la.predictive_covariance(x_test, noise=False, batch_size=batch_size)
            sigmas[name] = np.sqrt(np.maximum(np.einsum("nkk->nk", cov), 0.0))
    if reference in sigmas:
        ref = sigmas[reference]
        for row in rows:
            if row["structure"] in sigmas:
                rel = np.abs(sigmas[row["structure"]] - ref) / ref
                row.update(
                    sigma_rel_err_median=float(np.median(rel)), sigma_rel_err_max=float(rel.max())
                )
    return Comparison(rows, sigmas, alpha, beta, notes)


def summary(comparison: Comparison, columns=None) -> list[dict]:
    """The rows restricted to ``columns`` (default: the ones a reader compares first)."""
    columns = columns or [
        "structure",
        "status",
        "P",
        "eigenvalues",
        "sigma_rel_err_median",
        "sigma_rel_err_max",
        "coverage_95",
        "accuracy",
        "nll",
        "log_evidence",
        "fit_s",
        "predict_s",
        "fit_peak_MB",
        "estimate_MB",
    ]
    present = [c for c in columns if any(c in row for row in comparison.rows)]
    return [{c: row.get(c) for c in present} for row in comparison.rows]


def percent(x: float) -> str:
    """x as a percentage: whole percents from 1% up, two decimals below (0.37%)."""
    return f"{x:.0%}" if x >= 0.01 else f"{x:.2%}"


def sigma_errors(comparison: Comparison, *, reference: str = "full") -> str:
    """One line for a reader: each structure's median relative σ error against the
    reference's (at the common α, β), its largest, and whether its σ is mostly below or above
    the reference's — "diag 12% (at most 80%, above), ..."."""
    ref = comparison.sigmas[reference]
    return ", ".join(
        f"{row['structure']} {percent(row['sigma_rel_err_median'])} (at most "
        f"{percent(row['sigma_rel_err_max'])}, "
        f"{'below' if np.median(comparison.sigmas[row['structure']] - ref) < 0 else 'above'})"
        for row in comparison.rows
        if row["structure"] != reference and row["structure"] in comparison.sigmas
    )


def sigma_scatter(comparison: Comparison, *, reference: str = "full", title: str | None = None):
    """Log–log scatter of each structure's σ against the reference's (one point per test
    input and output); the diagonal is exact agreement. Returns the figure."""
    import matplotlib.pyplot as plt

    ref = comparison.sigmas.get(reference)
    others = [n for n in comparison.sigmas if n != reference]
    fig, axes = plt.subplots(
        1, max(len(others), 1), figsize=(3.2 * max(len(others), 1), 3.2), squeeze=False
    )
    for ax, name in zip(axes[0], others, strict=False):
        if ref is None:
            ax.set_axis_off()
            continue
        ax.loglog(ref.ravel(), comparison.sigmas[name].ravel(), ".", ms=2, alpha=0.4)
        lo, hi = ref.min(), ref.max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel(f"σ ({reference})")
    axes[0][0].set_ylabel("σ (structure)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def rank_sweep(
    model,
    x_train,
    y_train,
    x_test,
    ranks,
    reference_sigma,
    *,
    alpha: float,
    beta: float = 1.0,
    likelihood: str = "regression",
    batch_size: int | None = None,
) -> list[dict]:
    """lowrank at each k in ``ranks`` and fixed α, β against a reference σ (N_test, K), e.g.
    ``comparison.sigmas["full"]`` at ``comparison.alpha, comparison.beta``: one row per k with
    the median and largest relative σ error, the Lanczos steps (passes over the data), the fit
    time and the method ("lanczos", or "dense" when 2k + 1 > P)."""
    rows = []
    for k in ranks:
        with PeakMemory() as mem:
            la = Laplace(
                model,
                x_train,
                y_train,
                likelihood=likelihood,
                structure="lowrank",
                structure_options={"rank": int(k)},
                alpha=alpha,
                beta=beta if likelihood == "regression" else 1.0,
                batch_size=batch_size,
            )
        cov = la.predictive_covariance(x_test, noise=False, batch_size=batch_size)
        sig = np.sqrt(np.maximum(np.einsum("nkk->nk", cov), 0.0))
        rel = np.abs(sig - reference_sigma) / reference_sigma
        rows.append(
            {
                "rank": int(k),
                "method": la.structure.method,
                "steps": la.structure.info["steps"],
                "sigma_rel_err_median": float(np.median(rel)),
                "sigma_rel_err_max": float(rel.max()),
                "fit_s": mem.seconds,
            }
        )
    return rows
