"""sigma.sweep.plots and the sweep report notebook (03): the plots on a sweep table, and the
metric names notebook 01 records being the ones the report draws by default."""

import ast
import json

import jupytext
import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
from sweeputil import METRICS, ROOT, write_grid

from sigma.sweep import engine, records, report, table
from sigma.sweep import plots as sweep_plots
from sigma.sweep.grid import declared_parameters
from sigma.sweep.notebook import read_notebook

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOTEBOOK_01 = ROOT / "notebooks" / "01_original.py"
SWEEP_REPORT = ROOT / "notebooks" / "03_sweep_report.py"


def sweep_table(with_evidence=True) -> pd.DataFrame:
    rows = []
    for beta in (1.0, 3.0, 10.0, 30.0):
        for epochs in (5, 20):
            for seed in (0, 1):
                row = {"laplace_beta": beta, "epochs": epochs, "seed": seed}
                row |= {
                    "sigma_ggn_mean.setosa": beta**-0.5,
                    "sigma_ggn_mean.virginica": 2 * beta**-0.5,
                }
                row |= {"coverage_95": 0.9 + 0.01 * seed, "test_rmse": 1 / epochs + 0.01 * seed}
                if with_evidence:  # best β: 3 for 5 epochs, 10 for 20
                    row["log_evidence"] = (
                        -((np.log(beta) - np.log(3.0 if epochs == 5 else 10.0)) ** 2) + seed
                    )
                rows.append(row)
    t = pd.DataFrame(rows)
    t.attrs["parameters"] = ["laplace_beta", "epochs", "seed"]
    t.attrs["metrics"] = [c for c in t.columns if c not in t.attrs["parameters"]]
    return t


def test_curves_average_over_seeds_per_line():
    c = sweep_plots.curves(sweep_table(), "laplace_beta", "coverage_95")
    assert list(c.columns) == ["epochs", "laplace_beta", "mean", "min", "max", "n"]
    assert len(c) == 8 and (c["n"] == 2).all()
    np.testing.assert_allclose(c["mean"], 0.905)
    np.testing.assert_allclose(c["max"] - c["min"], 0.01)


def test_evidence_optimal_beta_per_line():
    best = sweep_plots.evidence_optimal(sweep_table())
    assert best.to_dict("list") == {
        "epochs": [5, 20],
        "laplace_beta": [3.0, 10.0],
        "log_evidence": [0.5, 0.5],
    }
    assert sweep_plots.evidence_optimal(sweep_table(with_evidence=False)).empty


def test_sweep_plots_draw_what_there_is():
    t = sweep_table()
    best = sweep_plots.evidence_optimal(t)
    fig, axes = plt.subplots(2, 2)
    ax = sweep_plots.plot_sigma_against_beta(t, ax=axes[0, 0], best=best)
    assert (
        len([ln for ln in ax.get_lines() if ln.get_label().startswith(("setosa", "virginica"))])
        == 4
    )
    assert (
        ax.get_xscale() == "log"
        and len([ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]) >= 2
    )
    ax = sweep_plots.plot_evidence_against_beta(t, ax=axes[0, 1])
    star = [ln for ln in ax.get_lines() if ln.get_label() == "evidence-optimal β"][0]
    np.testing.assert_allclose(star.get_xdata(), [3.0, 10.0])
    ax = sweep_plots.plot_coverage_against_beta(t, ax=axes[1, 0], nominal=0.95)
    assert any(ln.get_label() == "nominal 0.95" for ln in ax.get_lines())
    ax = sweep_plots.plot_test_error_against_epochs(
        t, ax=axes[1, 1], average_over=("seed", "laplace_beta")
    )
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    np.testing.assert_allclose(line.get_ydata(), [0.205, 0.055])
    plt.close(fig)


def test_sweep_plots_say_what_is_missing():
    fig, axes = plt.subplots(1, 3)
    sweep_plots.plot_evidence_against_beta(sweep_table(with_evidence=False), ax=axes[0])
    sweep_plots.plot_sigma_against_beta(table.load_sweep("nowhere"), ax=axes[1])
    sweep_plots.plot_test_error_against_epochs(table.load_sweep("nowhere"), ax=axes[2])
    texts = [t.get_text() for ax in axes for t in ax.texts]
    assert texts == [
        "log_evidence not recorded",
        "σ per output (sigma_ggn_mean.*) not recorded",
        "no parameter epochs",
    ]
    plt.close(fig)


# -- A5: what notebook 01 records is what the report draws ------------------------------------


def recorded_metric_names(path) -> set[str]:
    """The metric names a notebook passes to save_metrics (its metrics cell), read with ast."""
    names = set()
    for cell in jupytext.read(path).cells:
        if cell.cell_type != "code" or "save_metrics(" not in cell.source:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "save_metrics":
                arg = node.args[1]
                if isinstance(arg, ast.Call):  # dict(name=value, ...)
                    names |= {k.arg for k in arg.keywords}
                else:  # {"name": value, ...}
                    names |= {k.value for k in arg.keys}
    return names


def test_notebook_01_records_what_the_report_draws_by_default():
    metrics = recorded_metric_names(NOTEBOOK_01)
    assert {"sigma_ggn_mean", "coverage_95", "log_evidence", "test_rmse"} <= metrics
    defaults = {n: p.default for n, p in declared_parameters(read_notebook(SWEEP_REPORT)).items()}
    columns = {k: defaults[k] for k in sweep_plots.COLUMNS}
    assert columns == sweep_plots.COLUMNS  # the notebook and the plots module agree
    assert columns["beta_column"] in declared_parameters(read_notebook(NOTEBOOK_01))
    assert columns["sigma_prefix"].endswith(".")
    assert columns["sigma_prefix"][:-1] in metrics
    for key in ("coverage_column", "evidence_column", "error_column"):
        assert columns[key] in metrics, key


def test_the_stand_in_records_the_same_names_as_notebook_01():
    stand_in = recorded_metric_names(METRICS)
    assert stand_in and stand_in <= recorded_metric_names(NOTEBOOK_01)
    assert set(declared_parameters(read_notebook(METRICS))) <= set(
        declared_parameters(read_notebook(NOTEBOOK_01))
    )


def test_notebook_01_metrics_fill_every_default_plot(tmp_path):
    """Records with notebook 01's metric names, read back and drawn with the defaults."""
    names = recorded_metric_names(NOTEBOOK_01)
    for beta in (1.0, 10.0):
        for epochs in (5, 20):
            metrics = {n: 1.0 / beta for n in names}
            metrics["sigma_ggn_mean"] = [beta**-0.5, 2 * beta**-0.5, beta**-0.5]
            path = tmp_path / f"epochs={epochs}_laplace_beta={beta:g}" / "metrics.json"
            records.save_metrics(path, metrics)
            records.complete_record(path, parameters={"laplace_beta": beta, "epochs": epochs})
    t = table.load_sweep(tmp_path)
    fig, axes = plt.subplots(1, 4)
    best = sweep_plots.evidence_optimal(t)
    sweep_plots.plot_evidence_against_beta(t, ax=axes[0])
    sweep_plots.plot_sigma_against_beta(t, ax=axes[1], best=best)
    sweep_plots.plot_coverage_against_beta(t, ax=axes[2], best=best)
    sweep_plots.plot_test_error_against_epochs(t, ax=axes[3])
    assert [t.get_text() for ax in axes for t in ax.texts] == []  # nothing "not recorded"
    assert all(any(ln.get_marker() == "o" for ln in ax.get_lines()) for ax in axes)
    plt.close(fig)


# -- the sweep report notebook ------------------------------------------------------------------


def test_sweep_report_declares_its_parameters():
    declared = declared_parameters(read_notebook(SWEEP_REPORT))
    assert declared["sweep_dir"].default == "reports/sweeps/01_original"
    assert {
        "beta_column",
        "sigma_prefix",
        "coverage_column",
        "evidence_column",
        "error_column",
    } <= set(declared)


def _output_text(nb) -> str:
    return "".join(
        o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def _images(nb) -> list:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]


@pytest.mark.notebook
@pytest.mark.slow
def test_sweep_report_runs_on_a_sweep_folder(tmp_path):
    sweep = tmp_path / "sweeps" / "01_original"
    for beta in (1.0, 10.0, 100.0):
        for epochs in (5, 20):
            path = sweep / f"epochs={epochs}_laplace_beta={beta:g}" / "metrics.json"
            records.save_metrics(
                path,
                {
                    "sigma_ggn_mean": [beta**-0.5, 2 * beta**-0.5, beta**-0.5],
                    "coverage_95": 0.9,
                    "log_evidence": -abs(np.log10(beta) - 1),
                    "test_rmse": 1 / epochs,
                },
            )
            records.complete_record(
                path, parameters={"laplace_beta": beta, "epochs": epochs, "seed": 0}
            )
    out = tmp_path / "reports"
    # one column pointed at a metric these runs lack: the report says so, and still draws
    parameters = {"sweep_dir": str(sweep), "error_column": "test_error"}
    results = report.run_notebooks([SWEEP_REPORT], out, parameters, timeout=120)
    assert results[0]["ok"], results[0]["error"]
    nb = nbformat.read(out / "03_sweep_report.ipynb", as_version=4)
    assert len(_images(nb)) == 4
    text = _output_text(nb)
    assert "6 finished runs" in text
    assert "not recorded in these runs: test_error (set the column parameters above)" in text


@pytest.mark.notebook
@pytest.mark.slow
def test_the_report_draws_a_real_sweep_of_the_stand_in_at_its_defaults(tmp_path):
    """A5 end to end: the stand-in for notebook 01 run by the sweep, notebook 03 left at its
    default columns: every plot has data."""
    grid = write_grid(tmp_path, {"laplace_beta": [1.0, 10.0], "epochs": [1, 2]}, notebook=METRICS)
    result = engine.run_sweep(grid, tmp_path / "sweeps", workers=2, progress=False)
    assert [r.status for r in result.results] == ["done"] * 4, result.results
    out = tmp_path / "reports"
    results = report.run_notebooks([SWEEP_REPORT], out, {"sweep_dir": str(result.sweep_dir)})
    assert results[0]["ok"], results[0]["error"]
    nb = nbformat.read(out / "03_sweep_report.ipynb", as_version=4)
    assert len(_images(nb)) == 4
    text = _output_text(nb)
    assert "4 finished runs" in text and "not recorded in these runs" not in text
