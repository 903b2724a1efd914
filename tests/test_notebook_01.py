"""Notebook tier: the original notebook, re-run by papermill with small parameters."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

NOTEBOOK = ROOT / "notebooks" / "01_original.py"


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in ("beta", "epochs", "seed", "hidden_units", "test_size", "alpha", "metrics_path"):
        assert name in params, name
    assert params["beta"]["default"] == "10.0" and params["epochs"]["default"] == "20"
    assert params["beta"]["inferred_type_name"] == "float"


@pytest.mark.notebook
def test_runs_with_small_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    nb = run_notebook(
        NOTEBOOK, tmp_path, {"epochs": 2, "beta": 5.0, "seed": 1, "metrics_path": str(metrics_path)}
    )
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "original β = 5" in text
    record = json.loads(metrics_path.read_text())
    assert record["parameters"]["epochs"] == 2 and record["parameters"]["beta"] == 5.0
    m = record["metrics"]
    assert len(m["sigma_ggn_mean"]) == 3 and all(s > 0 for s in m["sigma_ggn_mean"])
    assert m["beta_summed"] == pytest.approx(2 * 5.0 / (100 * 3))
    assert 0.0 <= m["coverage_95"] <= 1.0
    assert record["versions"]["tensorflow"].startswith("2.")
