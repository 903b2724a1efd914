"""Notebook tier: choosing β and α (notebook 02), re-run by papermill with small parameters."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

NOTEBOOK = ROOT / "notebooks" / "02_choosing_beta.py"


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in ("beta_grid", "epochs", "seed", "hidden_units", "n_samples", "metrics_path"):
        assert name in params, name
    assert params["epochs"]["default"] == "20" and params["hidden_units"]["default"] == "4"
    assert params["beta_grid"]["inferred_type_name"] == "list"


@pytest.mark.notebook
def test_runs_with_small_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    nb = run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "epochs": 2,
            "beta_grid": [0.1, 1.0, 10.0],
            "n_samples": 200,
            "seed": 1,
            "metrics_path": str(metrics_path),
        },
    )
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "held-out NLL is lowest at β" in text and "the evidence picks α" in text
    record = json.loads(metrics_path.read_text())
    assert record["parameters"]["epochs"] == 2 and record["parameters"]["beta_grid"] == [
        0.1,
        1.0,
        10.0,
    ]
    m = record["metrics"]
    assert m["alpha"] > 0 and m["beta"] > 0 and 0 < m["gamma"] < 35
    assert m["beta_original"] == pytest.approx(20.0 / 300.0)
    assert (
        0.0 <= m["coverage_95"] <= 1.0 and len(m["sigma"]) == 3 and len(m["beta_per_output"]) == 3
    )
    assert set(m["classifier"]) == {
        "softmax at the trained weights",
        "Laplace, probit",
        "Laplace, sampled logits",
    }
