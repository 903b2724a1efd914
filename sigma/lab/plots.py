"""Plots the notebooks draw (matplotlib). Each takes arrays and returns the Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def prediction_bands(mean, std, targets, *, names=None, order=None, n_std: float = 2.0, title=None):
    """One panel per output: prediction ± n_std·σ per test point, with the targets.

    mean, std, targets : (N, K). Points are sorted by ``order`` (default: in each panel by
    target, then prediction) so the band reads as a curve.
    """
    mean, std, targets = (np.asarray(a, dtype=float) for a in (mean, std, targets))
    n, k = mean.shape
    names = names or [f"output {i}" for i in range(k)]
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), sharey=True, squeeze=False)
    pos = np.arange(n)
    for i, ax in enumerate(axes[0]):
        idx = np.lexsort((mean[:, i], targets[:, i])) if order is None else np.asarray(order)
        m, s = mean[idx, i], std[idx, i]
        ax.fill_between(
            pos, m - n_std * s, m + n_std * s, color="C0", alpha=0.25, label=f"±{n_std:g}σ"
        )
        ax.plot(pos, m, "o-", color="C0", ms=3, lw=1, label="prediction")
        ax.plot(pos, targets[idx, i], "k.", ms=5, label="target")
        inside = np.mean(np.abs(targets[:, i] - mean[:, i]) <= n_std * std[:, i])
        ax.set_title(f"{names[i]} ({inside:.0%} of targets within ±{n_std:g}σ)", fontsize=10)
        ax.set_xlabel("test point (sorted)")
    axes[0, 0].set_ylabel("network output")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# -- calibration and evidence (notebook 02) -----------------------------------------------------
def evidence_surface(alphas, betas, log_evidence, *, optimum=None, marks=None, depth: float = 60.0):
    """Filled contours of ln p(D | α, β) − its maximum over a log α × log β grid.

    alphas (A,), betas (B,), log_evidence (A, B) (e.g. ``Laplace.log_evidence`` on a meshgrid
    with ``indexing="ij"``). ``optimum`` (α, β) is marked with a star; ``marks`` {label: β}
    draws vertical lines. Values more than ``depth`` nats below the maximum are clipped.
    """
    alphas, betas = np.asarray(alphas, float), np.asarray(betas, float)
    rel = np.asarray(log_evidence, float) - np.max(log_evidence)
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    cs = ax.contourf(
        betas, alphas, np.maximum(rel, -depth), levels=np.linspace(-depth, 0, 13), cmap="viridis"
    )
    fig.colorbar(cs, ax=ax, label="ln evidence − max (nats)")
    if optimum is not None:
        ax.plot(
            optimum[1],
            optimum[0],
            "r*",
            ms=14,
            label=f"evidence optimum α={optimum[0]:.3g}, β={optimum[1]:.3g}",
        )
    for i, (label, b) in enumerate((marks or {}).items()):
        ax.axvline(b, color=f"C{i + 1}", ls="--", label=f"{label} (β={b:.3g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise precision β")
    ax.set_ylabel("prior precision α")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def beta_scan(scan, n_obs: int, *, marks=None, span: float = 3.0):
    """Two panels over β (log axis), for a :func:`sigma.lab.scans.beta_scan` result ``scan``.

    Left: −ln p(D | α(β), β) / NK (training, nats per target value; ``n_obs`` = NK) next to
    the held-out Gaussian NLL per value, the same units, so their minima can be compared; the
    y axis shows ``span`` nats above the lowest value. Right: held-out coverage of the 68% and
    95% intervals. ``marks`` {label: β} draws vertical lines (evidence optimum, original β).
    """
    b = np.asarray(scan["beta"], float)
    per_value = -np.asarray(scan["log_evidence"], float) / n_obs
    nll = np.asarray(scan["nll"], float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    axes[0].plot(b, per_value, "o-", label="−ln evidence / NK (training)")
    axes[0].plot(b, nll, "s-", label="held-out Gaussian NLL per value")
    low = min(per_value.min(), nll.min())
    axes[0].set_ylim(low - 0.1 * span, low + span)
    axes[0].set_ylabel("nats per target value")
    axes[0].set_title("evidence (α re-estimated at each β) and held-out NLL", fontsize=10)
    axes[1].plot(b, scan["coverage_68"], "o-", color="C2", label="68% interval")
    axes[1].plot(b, scan["coverage_95"], "s-", color="C3", label="95% interval")
    axes[1].axhline(0.68, color="C2", lw=0.8, ls=":")
    axes[1].axhline(0.95, color="C3", lw=0.8, ls=":")
    axes[1].set_ylabel("held-out coverage")
    axes[1].set_title("coverage (dotted: nominal)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("noise precision β")
        for i, (label, value) in enumerate((marks or {}).items()):
            ax.axvline(value, color=f"C{i + 4}", ls="--", lw=1, label=label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def coverage_diagram(curves):
    """Observed against nominal coverage of central Gaussian intervals.

    curves : {label: (levels, observed)} from :func:`sigma.metrics.coverage_curve`.
    """
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
    for label, (levels, observed) in curves.items():
        ax.plot(levels, observed, "o-", ms=3, label=label)
    ax.set_xlabel("nominal coverage of μ ± zσ")
    ax.set_ylabel("observed coverage (held out)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def error_vs_sigma(mean, std, targets, *, names=None):
    """|target − mean| against σ for every held-out value, one colour per output, with the
    lines |error| = σ and 1.96σ."""
    mean, std, targets = (np.asarray(a, float) for a in (mean, std, targets))
    k = mean.shape[1]
    names = names or [f"output {i}" for i in range(k)]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for i in range(k):
        ax.plot(std[:, i], np.abs(targets[:, i] - mean[:, i]), "o", ms=4, alpha=0.7, label=names[i])
    s = np.linspace(0, std.max() * 1.05, 2)
    ax.plot(s, s, "k-", lw=1, label="|error| = σ")
    ax.plot(s, 1.96 * s, "k--", lw=1, label="|error| = 1.96σ")
    ax.set_xlabel("predictive σ")
    ax.set_ylabel("|target − prediction|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def reliability_diagram(probabilities, labels, *, n_bins: int = 10):
    """Accuracy against confidence per bin for several predictives, plus a histogram of the
    confidences. probabilities : {label: (N, K)}; labels : integer (N,) or one-hot (N, K)."""
    from sigma.metrics import reliability  # local: plots stays importable on its own

    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.8, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
    for i, (label, probs) in enumerate(probabilities.items()):
        r = reliability(probs, labels, n_bins)
        used = r["count"] > 0
        ax.plot(r["confidence"][used], r["accuracy"][used], "o-", color=f"C{i}", label=label)
        hist.hist(np.max(probs, axis=1), bins=r["edges"], histtype="step", color=f"C{i}")
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    hist.set_xlabel("confidence (max probability)")
    hist.set_ylabel("count")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    return fig


# -- training for the posterior (notebook 05) ---------------------------------------------------
def evidence_history(
    history,
    *,
    groups=None,
    beta_unit: float = 1.0,
    beta_truth: float | None = None,
    beta_marks=None,
    title: str | None = None,
):
    """α_g, β and the log evidence at each re-estimation of a :class:`sigma.EvidenceCallback`.

    history : ``cb.history`` (dicts with epoch, alpha, beta, log_evidence; a final record at
        epoch "end" is drawn one step after the last epoch). groups : the names of the α_g.
    beta_unit : β is drawn as β / beta_unit (e.g. y_scale² to go back to the original units of
        a standardised target). beta_truth : the true β, drawn with a ±10% band.
    beta_marks : {label: β} drawn as horizontal lines (e.g. the post-hoc evidence's β).
    Classification histories (β fixed at 1) get no β panel. Returns the figure.
    """
    epochs = []
    for h in history:
        e = h["epoch"]
        epochs.append(e if e != "end" else (epochs[-1] + 1 if epochs else 1))
    epochs = np.asarray(epochs, float)
    alphas = np.array([np.atleast_1d(h["alpha"]) for h in history], float)
    has_beta = any(float(h["beta"]) != 1.0 for h in history) or beta_truth is not None
    panels = 3 if has_beta else 2
    n_groups = alphas.shape[1]
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6 + 0.22 * (n_groups // 4)))
    ax = axes[0]
    names = list(groups) if groups is not None else [f"group {g}" for g in range(n_groups)]
    styles = ["-", "--", ":", "-."]  # ten colours, then the next ten dashed, …
    for g in range(n_groups):
        ax.semilogy(epochs, alphas[:, g], styles[(g // 10) % 4], color=plt.cm.tab10(g % 10),
                    lw=1.5, label=names[g])  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("prior precision α_g")
    ax.set_title("α per weight group")
    if n_groups <= 4:
        ax.legend(fontsize=7, loc="best")
    else:  # below the panels, where it hides no curve
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize=7,
                   ncol=min(n_groups, 7), frameon=False)  # fmt: skip
    if has_beta:
        ax = axes[1]
        beta = np.array([float(h["beta"]) for h in history]) / beta_unit
        ax.plot(epochs, beta, "o-", ms=3, color="C0", label="evidence during training")
        if beta_truth is not None:
            ax.axhline(beta_truth, color="k", lw=1, label=f"truth β = {beta_truth:g}")
            ax.axhspan(0.9 * beta_truth, 1.1 * beta_truth, color="k", alpha=0.08, label="±10%")
        for i, (label, value) in enumerate((beta_marks or {}).items()):
            ax.axhline(value, color=f"C{i + 1}", ls="--", lw=1.2, label=f"{label}: {value:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("noise precision β")
        ax.set_title(f"β (final {beta[-1]:.3g})")
        ax.legend(fontsize=7)
    ax = axes[-1]
    log_ev = np.array([float(h["log_evidence"]) for h in history])
    ax.plot(epochs, log_ev, "o-", ms=3, color="C2")
    settled = log_ev[len(log_ev) // 5 :]  # the first re-estimations are far below: not the story
    if settled.size > 1 and np.ptp(settled) > 0:
        lo, hi = settled.min(), settled.max()
        ax.set_ylim(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ln p(D | α, β) (nats)")
    ax.set_title(f"log evidence (final {log_ev[-1]:.1f})")
    if title:
        fig.suptitle(title)
    rows = 0 if n_groups <= 4 else -(-n_groups // 7)
    fig.tight_layout(rect=(0, 0.05 * rows, 1, 1))
    return fig


# -- classifiers under shift (notebook 06) ------------------------------------------------------
def shift_curves(rows, *, shift: str = "rotation", columns=("nll", "ece"), xlabel=None):
    """One panel per metric column against the shift's level, one line per method (± the
    standard deviation over seeds where the rows have ``<column>_sd``). rows : dicts with
    method, shift, level and the columns (:func:`sigma.lab.classifiers.mean_over_seeds`)."""
    rows = [r for r in rows if r["shift"] == shift]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(columns), figsize=(4.6 * len(columns), 3.4))
    axes = np.atleast_1d(axes)
    for ax, column in zip(axes, columns, strict=True):
        for i, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["level"])
            level = np.array([r["level"] for r in mine])
            value = np.array([r[column] for r in mine])
            ax.plot(level, value, "o-", color=f"C{i}", label=method, ms=3)
            sd = [r.get(f"{column}_sd") for r in mine]
            if all(s is not None for s in sd):
                ax.fill_between(level, value - sd, value + sd, color=f"C{i}", alpha=0.15)
        ax.set_xlabel(xlabel or shift)
        ax.set_ylabel(column.upper())
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
