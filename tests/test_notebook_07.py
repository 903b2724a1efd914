"""Notebook tier: input-dependent noise and conformal calibration (notebook 07), re-run by
papermill with tiny parameters; checks the structure of the metrics it records (not the issue's
targets, which the notebook measures at its defaults)."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

NOTEBOOK = ROOT / "notebooks" / "07_heteroscedastic_and_conformal.py"
METHODS = {"Laplace (homoscedastic)", "Laplace (heteroscedastic)", "deep ensemble", "MC dropout"}


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in ("seed", "n_seeds", "n_friedman", "epochs_friedman", "calibration", "resplits",
                 "ensemble_size", "metrics_path"):  # fmt: skip
        assert name in params, name
    assert params["n_seeds"]["default"] == "5" and params["ensemble_size"]["default"] == "5"
    assert params["friedman_high"]["inferred_type_name"] == "float"


@pytest.mark.notebook
def test_runs_with_tiny_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "n_seeds": 1,
            "n_line": 60,
            "hidden_line": 4,
            "epochs_line": 4,
            "n_friedman": 120,
            "n_friedman_test": 100,
            "hidden_friedman": 4,
            "hidden_diabetes": 4,
            "epochs_friedman": 4,
            "epochs_diabetes": 4,
            "every": 2,
            "resplits": 5,
            "ensemble_size": 2,
            "mc_samples": 5,
            "metrics_path": str(metrics_path),
        },
        timeout=240,
    )
    metrics = json.loads(metrics_path.read_text())["metrics"]
    assert set(metrics["friedman"]) == METHODS and set(metrics["diabetes"]) == METHODS
    for row in metrics["friedman"].values():
        assert 0 <= row["coverage_95"] <= 1 and 0 <= row["conformal_coverage_90"] <= 1
        assert row["rmse"] > 0 and row["conformal_width_95"] > 0
    assert set(metrics["line_regions"]) == {"homoscedastic", "heteroscedastic"}
    assert len(metrics["targets"]) == 5 and all(
        isinstance(v, bool) for v in metrics["targets"].values()
    )
