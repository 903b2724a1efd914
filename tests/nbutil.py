"""Run a jupytext notebook through papermill in a test (the notebook tier)."""

import functools
from pathlib import Path

import jupytext
import nbformat
import papermill

from sigma.sweep.run import record_executed

ROOT = Path(__file__).resolve().parents[1]


def to_ipynb(source: Path, dest: Path) -> Path:
    """Write the .ipynb twin of a jupytext percent script (keeps the `parameters` tag)."""
    nbformat.write(jupytext.read(source), dest)
    return dest


def declared_parameters(source: Path, tmp_path: Path) -> dict:
    """The parameters papermill finds in the notebook's `parameters` cell."""
    return papermill.inspect_notebook(str(to_ipynb(source, tmp_path / f"{source.stem}.in.ipynb")))


def _completes_the_record(run):
    """If ``metrics_path`` is given, complete the metrics the notebook saved there into the full
    ``metrics.json`` record, as the sweep runner does (parameters from papermill, versions, git
    state: ``sigma.sweep.run.record_executed``)."""

    @functools.wraps(run)
    def run_and_record(source: Path, tmp_path: Path, parameters: dict, *args, **kwargs):
        nb = run(source, tmp_path, parameters, *args, **kwargs)
        if parameters.get("metrics_path"):
            record_executed(parameters["metrics_path"], jupytext.read(source), nb, source.name)
        return nb

    return run_and_record


@_completes_the_record
def run_notebook(source: Path, tmp_path: Path, parameters: dict, timeout: int = 300):
    """Execute with papermill from the repo root; returns the executed notebook."""
    src = to_ipynb(source, tmp_path / f"{source.stem}.in.ipynb")
    out = tmp_path / f"{source.stem}.out.ipynb"
    papermill.execute_notebook(
        str(src),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(ROOT),
        execution_timeout=timeout,
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    assert_no_retracing(nb)
    return nb


def outputs_text(nb) -> str:
    """Every text output of the executed notebook's code cells (streams, results, errors)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k == "text/plain")
    return "".join(parts)


def assert_no_retracing(nb) -> None:
    """TensorFlow warns when a tf.function is traced again and again ("triggered tf.function
    retracing"): sigma traces each graph once per model, so no notebook may show it."""
    text = outputs_text(nb)
    assert "retracing" not in text, text[
        text.find("retracing") - 300 : text.find("retracing") + 100
    ]
