"""Notebook tier: the evidence chooses the model (notebook 09), re-run by papermill with tiny
parameters; checks the parameters papermill finds and the structure of the metrics the notebook
records (not the numbers it measures at its defaults)."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

KINDS = ("homoscedastic", "heteroscedastic")
NOTEBOOK = ROOT / "notebooks" / "09_model_selection.py"


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in ("seed", "n_splits", "widths", "depths", "default_width", "n_friedman",
                 "friedman_noise", "epochs", "restarts", "every", "structure",
                 "metrics_path"):  # fmt: skip
        assert name in params, name
    assert params["n_splits"]["default"] == "5" and params["default_width"]["default"] == "50"
    assert params["friedman_noise"]["inferred_type_name"] == "float"
    assert params["restarts"]["default"] == "2"


@pytest.mark.notebook
def test_runs_with_tiny_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "n_splits": 1,
            "widths": [4],
            "depths": [0, 1],
            "default_width": 4,
            "n_friedman": 80,
            "n_friedman_test": 50,
            "epochs": 4,
            "restarts": 2,
            "every": 2,
            "metrics_path": str(metrics_path),
        },
        timeout=240,
    )
    record = json.loads(metrics_path.read_text())
    metrics = record["metrics"]
    assert set(metrics["summary"]) == {"diabetes", "friedman"}
    for row in metrics["summary"].values():
        assert row["splits"] == 1 and 0 <= row["agreement"] <= 1 and row["regret"] >= 0
        assert row["choices"][0] in {f"{k} {s}" for k in KINDS for s in ("4×1", "linear")}
        assert row["best_test_loglik"] >= row["chosen_test_loglik"]
    assert set(metrics["per_candidate"]) == {
        f"{d} | {k} {s}" for d in ("diabetes", "friedman") for k in KINDS for s in ("4×1", "linear")
    }
    assert len(metrics["targets"]) == 4
    assert all(isinstance(v, bool) for v in metrics["targets"].values())
    assert record["parameters"]["widths"] == [4] and record["parameters"]["restarts"] == 2
