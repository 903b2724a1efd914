"""Plots of a sweep: the table of :func:`sigma.sweep.table.load_sweep`, one row per run.

Each plot draws a metric against one parameter (β or epochs), one line per combination of the
other parameters that vary in the sweep; replicate parameters (``seed``) are averaged over, the
band showing their min–max. Missing metrics give an empty panel that says so, never an error:
a notebook may not record every metric.

The default column names (:data:`COLUMNS`) are those notebook 01 (``notebooks/01_original.py``)
records, and the defaults of the sweep report (``notebooks/03_sweep_report.py``).
"""

from __future__ import annotations

import itertools

from sigma.sweep import require_notebooks_extra

require_notebooks_extra()  # pandas, before it is imported below

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPLICATES = ("seed",)  # parameters averaged over rather than drawn as separate lines
# What notebook 01 records: the β axis (a parameter) and the metrics drawn against it.
BETA = "laplace_beta"  # noise precision of the Laplace error bars
EPOCHS = "epochs"
SIGMA_PREFIX = "sigma_ggn_mean."  # σ per output, the mean over the held-out inputs
COVERAGE = "coverage_95"  # fraction of held-out targets inside ±1.96σ
EVIDENCE = "log_evidence"  # ln p(D | α, β)
ERROR = "test_rmse"  # held-out error
COLUMNS = {
    "beta_column": BETA,
    "sigma_prefix": SIGMA_PREFIX,
    "coverage_column": COVERAGE,
    "evidence_column": EVIDENCE,
    "error_column": ERROR,
}  # named as the parameters of notebooks/03_sweep_report.py
_STYLES = ("-", "--", ":", "-.")


def line_groups(table: pd.DataFrame, x: str, average_over=REPLICATES) -> list[str]:
    """The parameters, other than ``x`` and the replicates, that vary across the table."""
    params = table.attrs.get("parameters", [])
    return [p for p in params if p != x and p not in average_over and table[p].nunique() > 1]


def curves(table: pd.DataFrame, x: str, y: str, average_over=REPLICATES) -> pd.DataFrame:
    """Mean, min, max and count of column ``y`` per value of ``x`` and per line group.

    Returns a frame with the group columns, ``x``, ``mean``, ``min``, ``max`` and ``n``,
    sorted by group then ``x``; rows where ``y`` is missing are left out.
    """
    groups = line_groups(table, x, average_over)
    data = table.dropna(subset=[y])
    if data.empty:
        return pd.DataFrame(columns=[*groups, x, "mean", "min", "max", "n"])
    stats = data.groupby([*groups, x])[y].agg(["mean", "min", "max", "count"])
    return stats.rename(columns={"count": "n"}).reset_index()


def evidence_optimal(
    table: pd.DataFrame, x: str = BETA, evidence: str = EVIDENCE, average_over=REPLICATES
) -> pd.DataFrame:
    """The ``x`` of largest (mean) log evidence, per line group.

    Returns the group columns, ``x`` and ``evidence``; empty if the evidence was not recorded.
    """
    if evidence not in table or x not in table:
        return pd.DataFrame(columns=[x, evidence])
    c = curves(table, x, evidence, average_over)
    groups = line_groups(table, x, average_over)
    if c.empty:
        return pd.DataFrame(columns=[*groups, x, evidence])
    best = c.loc[c.groupby(groups)["mean"].idxmax()] if groups else c.loc[[c["mean"].idxmax()]]
    return best[[*groups, x, "mean"]].rename(columns={"mean": evidence}).reset_index(drop=True)


def plot_against(
    table: pd.DataFrame,
    x: str,
    y: str,
    *,
    ax=None,
    label: str | None = None,
    color=None,
    average_over=REPLICATES,
):
    """One line of ``y`` against ``x`` per line group (min–max band over replicates)."""
    ax = ax if ax is not None else plt.gca()
    if x not in table or y not in table:
        return _no_data(ax, f"{y} not recorded" if x in table else f"no parameter {x}")
    c = curves(table, x, y, average_over)
    if c.empty:
        return _no_data(ax, f"{y}: no values")
    groups = line_groups(table, x, average_over)
    for (key, part), style in zip(_by(c, groups), itertools.cycle(_STYLES)):
        name = ", ".join(f"{g}={v:g}" if isinstance(v, float) else f"{g}={v}" for g, v in key)
        text = f"{label} ({name})" if label and name else (label or name or y)
        (line,) = ax.plot(part[x], part["mean"], style, marker="o", color=color, label=text)
        if (part["n"] > 1).any():
            ax.fill_between(part[x], part["min"], part["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if _positive(table[x]):
        ax.set_xscale("log")
    return ax


def plot_sigma_against_beta(
    table: pd.DataFrame,
    *,
    ax=None,
    x: str = BETA,
    prefix: str = SIGMA_PREFIX,
    names=None,
    best=None,
):
    """σ of each output (columns ``<prefix><output>``) against β.

    names : labels for outputs recorded as a list (columns ``<prefix>0``, ``<prefix>1``, ...).
    best : :func:`evidence_optimal`'s frame, marked by vertical lines.
    """
    ax = ax if ax is not None else plt.gca()
    columns = [c for c in table.columns if c.startswith(prefix)]
    if not columns:
        return _no_data(ax, f"σ per output ({prefix}*) not recorded")
    for i, col in enumerate(columns):
        label = col[len(prefix) :]
        if names is not None and label.isdigit() and int(label) < len(names):
            label = names[int(label)]
        plot_against(table, x, col, ax=ax, label=label, color=f"C{i}")
    ax.set_ylabel("σ")
    if all(_positive(table[c]) for c in columns):
        ax.set_yscale("log")
    ax.set_title("σ per output against β")
    return _finish(ax, best, x)


def plot_coverage_against_beta(
    table: pd.DataFrame,
    *,
    ax=None,
    x: str = BETA,
    y: str = COVERAGE,
    nominal: float | None = None,
    best=None,
):
    """Held-out coverage against β, with the nominal level as a horizontal line if given."""
    ax = ax if ax is not None else plt.gca()
    plot_against(table, x, y, ax=ax)
    if nominal is not None:
        ax.axhline(nominal, color="grey", lw=1, label=f"nominal {nominal:g}")
    ax.set_title("held-out coverage against β")
    return _finish(ax, best, x)


def plot_evidence_against_beta(table: pd.DataFrame, *, ax=None, x: str = BETA, y: str = EVIDENCE):
    """Log evidence against β, the best β of each line starred."""
    ax = ax if ax is not None else plt.gca()
    plot_against(table, x, y, ax=ax)
    best = evidence_optimal(table, x, y)
    if not best.empty:
        ax.plot(best[x], best[y], "*", ms=16, color="k", label="evidence-optimal β")
    ax.set_title("log evidence against β")
    return _finish(ax, None, x)


def plot_test_error_against_epochs(
    table: pd.DataFrame,
    *,
    ax=None,
    x: str = EPOCHS,
    y: str = ERROR,
    average_over=REPLICATES,
):
    """Held-out error against the number of epochs, one line per β (and other parameters).

    average_over : parameters averaged rather than drawn apart, e.g. ("seed", "laplace_beta")
    when β does not enter training.
    """
    ax = ax if ax is not None else plt.gca()
    plot_against(table, x, y, ax=ax, average_over=average_over)
    ax.set_xscale("linear")
    ax.set_title("test error against epochs")
    return _finish(ax, None, x)


def mark_optimum(ax, best: pd.DataFrame | None, x: str = BETA):
    """Dotted vertical lines at the evidence-optimal β (:func:`evidence_optimal`)."""
    if best is None or len(best) == 0:
        return ax
    for value in sorted(set(best[x])):
        ax.axvline(value, color="k", ls=":", lw=1)
    ax.plot([], [], "k:", lw=1, label="evidence-optimal β")
    return ax


def _finish(ax, best, x):
    mark_optimum(ax, best, x)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return ax


def _by(c: pd.DataFrame, groups: list[str]):
    if not groups:
        yield (), c
        return
    for key, part in c.groupby(groups):
        yield tuple(zip(groups, key if isinstance(key, tuple) else (key,), strict=True)), part


def _positive(values) -> bool:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    return len(v) > 0 and bool(np.all(v > 0))


def _no_data(ax, message: str):
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax
