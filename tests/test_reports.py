"""sigma.reports (offline HTML, run, render, index), sigma.sweep_plots, and the sweep report
notebook run on a sweep folder."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest

from sigma import reports, runs, sweep_plots
from sigma.sweep import declared_parameters

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DATA = Path(__file__).parent / "data"
PLAIN = DATA / "tiny_plain.py"
ROOT = Path(__file__).resolve().parents[1]
SWEEP_REPORT = ROOT / "notebooks" / "03_sweep_report.py"
CDN = re.compile(
    r"<script[^>]*\ssrc=\"?https?:|<link[^>]*\shref=\"?https?:|import\(\s*['\"]https?:", re.I
)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [unquote(v) for k, v in attrs if k == "href"]


def hrefs(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text())
    return parser.hrefs


def executed_notebook(
    source="print('hello from the code cell')", output="hello"
) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A title\nSome text, $\\sigma^2$."),
        nbformat.v4.new_code_cell(
            source, outputs=[nbformat.v4.new_output("stream", name="stdout", text=output)]
        ),
    ]
    return nb


# -- HTML ---------------------------------------------------------------------------------------


def test_html_is_offline_with_and_without_code(tmp_path):
    nb = executed_notebook()
    code = reports.render_html(nb, tmp_path / "a.html", code=True).read_text()
    nocode = reports.render_html(nb, tmp_path / "a.nocode.html", code=False).read_text()
    for page in (code, nocode):
        assert "hello" in page and "A title" in page
        assert not CDN.search(page), CDN.search(page)
    assert "hello from the code cell" in code and "hello from the code cell" not in nocode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "a.nocode.html"]


def test_render_missing_renders_only_what_is_missing_or_stale(tmp_path):
    nbformat.write(executed_notebook(), tmp_path / "01_x.ipynb")
    run_dir = tmp_path / "sweeps" / "01_x" / "beta=1"
    run_dir.mkdir(parents=True)
    nbformat.write(executed_notebook(), run_dir / "01_x.ipynb")
    (tmp_path / ".tmp").mkdir()  # scratch: never rendered
    nbformat.write(executed_notebook(), tmp_path / ".tmp" / "scratch.ipynb")

    written = reports.render_missing(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "01_x.html",
        "01_x.nocode.html",
        "sweeps/01_x/beta=1/01_x.html",
    ]
    assert reports.render_missing(tmp_path) == []


# -- run ----------------------------------------------------------------------------------------


@pytest.mark.notebook
def test_run_executes_at_given_parameters_and_renders(tmp_path, capsys):
    out = tmp_path / "reports"
    assert (
        reports.main(["run", str(PLAIN), "--out", str(out), "-p", "beta=2", "-p", "label=zz"]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny_plain.html",
        "tiny_plain.ipynb",
        "tiny_plain.nocode.html",
    ]
    executed = nbformat.read(out / "tiny_plain.ipynb", as_version=4)
    assert "beta=2.0 epochs=1 label=zz flag=False" in json.dumps(executed)
    assert not reports.is_failed(executed)
    code, nocode = (
        (out / "tiny_plain.html").read_text(),
        (out / "tiny_plain.nocode.html").read_text(),
    )
    assert "sleep_s" in code and "sleep_s" not in nocode  # the code cells are hidden
    assert "beta=2.0 epochs=1" in nocode  # outputs stay
    assert not CDN.search(code)

    # a notebook that raises is still written, with its error; the exit code says so
    assert reports.main(["run", str(PLAIN), "--out", str(out), "-p", "fail_at_beta=1.0"]) == 1
    assert "FAILED tiny_plain: RuntimeError: failing on purpose" in capsys.readouterr().err
    assert reports.is_failed(out / "tiny_plain.ipynb")
    assert "failing on purpose" in (out / "tiny_plain.nocode.html").read_text()
    assert not (out / ".tmp").exists()


def test_run_checks_parameters_first(tmp_path, capsys):
    out = tmp_path / "reports"
    assert reports.main(["run", str(PLAIN), "--out", str(out), "-p", "gamma=1"]) == 2
    assert "'gamma' is not declared" in capsys.readouterr().err
    assert reports.main(["run", str(PLAIN), "--out", str(out), "-p", "epochs=x"]) == 2
    assert not out.exists()


# -- index --------------------------------------------------------------------------------------


def test_index_links_every_page_offline(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    nbformat.write(executed_notebook(), out / "01_x.ipynb")
    reports.render_html(out / "01_x.ipynb", out / "01_x.html")
    reports.render_html(out / "01_x.ipynb", out / "01_x.nocode.html", code=False)
    failed_nb = executed_notebook()
    failed_nb.metadata["papermill"] = {"exception": True}
    nbformat.write(failed_nb, out / "02_y.ipynb")
    reports.render_html(out / "02_y.ipynb", out / "02_y.html")
    sweep = out / "sweeps" / "01_x"
    for beta in (1.0, 10.0):
        d = sweep / f"beta={beta:g}"
        runs.record_metrics(
            d / "metrics.json", {"beta": beta}, {"coverage": 0.9, "sigma": [0.1, 0.2]}
        )
        reports.render_html(executed_notebook(), d / "01_x.html")
    bad = sweep / "failed" / "beta=100"
    runs.write_json_atomic(
        bad / "error.json", {"parameters": {"beta": 100.0}, "error": "ValueError: <no>"}
    )
    reports.render_html(executed_notebook(), bad / "01_x.html")
    reports.render_html(executed_notebook(), out / "bench" / "table.html")

    index = reports.write_index(out)
    assert index == out / "index.html"
    text = index.read_text()
    links = hrefs(index)
    assert all(not h.startswith(("http", "/")) for h in links)  # relative: works offline
    assert all((out / h).is_file() for h in links)
    pages = {p.relative_to(out).as_posix() for p in out.rglob("*.html")} - {"index.html"}
    assert pages <= set(links)
    assert "raised an error" in text and "ValueError: &lt;no&gt;" in text
    assert "2 finished run(s), 1 failed" in text and "0.9" in text
    assert not CDN.search(text)


def test_index_of_an_empty_folder(tmp_path):
    text = reports.write_index(tmp_path).read_text()
    assert "No reports yet" in text


# -- sweep plots --------------------------------------------------------------------------------


def sweep_table(with_evidence=True) -> pd.DataFrame:
    rows = []
    for beta in (1.0, 3.0, 10.0, 30.0):
        for epochs in (5, 20):
            for seed in (0, 1):
                row = {"beta": beta, "epochs": epochs, "seed": seed}
                row |= {"sigma.setosa": beta**-0.5, "sigma.virginica": 2 * beta**-0.5}
                row |= {"coverage": 0.9 + 0.01 * seed, "test_error": 1 / epochs + 0.01 * seed}
                if with_evidence:  # best β: 3 for 5 epochs, 10 for 20
                    row["log_evidence"] = (
                        -((np.log(beta) - np.log(3.0 if epochs == 5 else 10.0)) ** 2) + seed
                    )
                rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["parameters"] = ["beta", "epochs", "seed"]
    table.attrs["metrics"] = [c for c in table.columns if c not in table.attrs["parameters"]]
    return table


def test_curves_average_over_seeds_per_line():
    c = sweep_plots.curves(sweep_table(), "beta", "coverage")
    assert list(c.columns) == ["epochs", "beta", "mean", "min", "max", "n"]
    assert len(c) == 8 and (c["n"] == 2).all()
    np.testing.assert_allclose(c["mean"], 0.905)
    np.testing.assert_allclose(c["max"] - c["min"], 0.01)


def test_evidence_optimal_beta_per_line():
    best = sweep_plots.evidence_optimal(sweep_table())
    assert best.to_dict("list") == {
        "epochs": [5, 20],
        "beta": [3.0, 10.0],
        "log_evidence": [0.5, 0.5],
    }
    assert sweep_plots.evidence_optimal(sweep_table(with_evidence=False)).empty


def test_sweep_plots_draw_what_there_is():
    table = sweep_table()
    best = sweep_plots.evidence_optimal(table)
    fig, axes = plt.subplots(2, 2)
    ax = sweep_plots.plot_sigma_against_beta(table, ax=axes[0, 0], best=best)
    assert (
        len([ln for ln in ax.get_lines() if ln.get_label().startswith(("setosa", "virginica"))])
        == 4
    )
    assert (
        ax.get_xscale() == "log"
        and len([ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]) >= 2
    )
    ax = sweep_plots.plot_evidence_against_beta(table, ax=axes[0, 1])
    star = [ln for ln in ax.get_lines() if ln.get_label() == "evidence-optimal β"][0]
    np.testing.assert_allclose(star.get_xdata(), [3.0, 10.0])
    ax = sweep_plots.plot_coverage_against_beta(table, ax=axes[1, 0], nominal=0.95)
    assert any(ln.get_label() == "nominal 0.95" for ln in ax.get_lines())
    ax = sweep_plots.plot_test_error_against_epochs(
        table, ax=axes[1, 1], average_over=("seed", "beta")
    )
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    np.testing.assert_allclose(line.get_ydata(), [0.205, 0.055])
    plt.close(fig)


def test_sweep_plots_say_what_is_missing():
    fig, axes = plt.subplots(1, 3)
    sweep_plots.plot_evidence_against_beta(sweep_table(with_evidence=False), ax=axes[0])
    sweep_plots.plot_sigma_against_beta(runs.load_sweep("nowhere"), ax=axes[1])
    sweep_plots.plot_test_error_against_epochs(runs.load_sweep("nowhere"), ax=axes[2])
    texts = [t.get_text() for ax in axes for t in ax.texts]
    assert texts == [
        "log_evidence not recorded",
        "σ per output (sigma.*) not recorded",
        "no parameter epochs",
    ]
    plt.close(fig)


# -- the sweep report notebook ------------------------------------------------------------------


def test_sweep_report_declares_its_parameters():
    declared = declared_parameters(reports.read_notebook(SWEEP_REPORT))
    assert declared["sweep_dir"].default == "reports/sweeps/01_original"
    assert {
        "beta_column",
        "sigma_prefix",
        "coverage_column",
        "evidence_column",
        "error_column",
    } <= set(declared)


@pytest.mark.notebook
def test_sweep_report_runs_on_a_sweep_folder(tmp_path):
    sweep = tmp_path / "sweeps" / "01_original"
    for beta in (1.0, 10.0, 100.0):
        for epochs in (5, 20):
            runs.record_metrics(
                sweep / f"epochs={epochs}_laplace_beta={beta:g}" / "metrics.json",
                {"laplace_beta": beta, "epochs": epochs, "seed": 0},
                {
                    "sigma_ggn_mean": [beta**-0.5, 2 * beta**-0.5, beta**-0.5],
                    "coverage_95": 0.9,
                    "log_evidence": -abs(np.log10(beta) - 1),
                    "test_rmse": 1 / epochs,
                },
            )
    out = tmp_path / "reports"
    results = reports.run([SWEEP_REPORT], out, {"sweep_dir": str(sweep)}, timeout=120)
    assert results[0]["ok"], results[0]["error"]
    nb = nbformat.read(out / "03_sweep_report.ipynb", as_version=4)
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 4
    text = json.dumps(nb)
    assert "6 finished runs" in text
