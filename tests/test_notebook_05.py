"""Notebook tier: training for the posterior (notebook 05), re-run by papermill with small
parameters; checks the structure of the metrics it records (not the issue's targets, which
the notebook measures at its defaults)."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

NOTEBOOK = ROOT / "notebooks" / "05_training_for_the_posterior.py"
REGRESSION = {"post-hoc evidence", "evidence-trained", "deep ensemble", "MC dropout"}
CLASSIFICATION = REGRESSION | {"plain softmax", "evidence-trained softmax"}


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in (
        "seed",
        "n_friedman",
        "n_splits",
        "epochs_friedman",
        "epochs_diabetes",
        "epochs_digits",
        "every",
        "warmup",
        "structures_digits",
        "validation_digits",
        "ensemble_size",
        "mc_samples",
        "metrics_path",
    ):
        assert name in params, name
    assert params["n_friedman"]["default"] == "1000" and params["n_splits"]["default"] == "5"
    assert params["ensemble_size"]["default"] == "5"
    assert params["friedman_noise"]["inferred_type_name"] == "float"


@pytest.mark.notebook
def test_runs_with_small_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "n_friedman": 120,
            "n_friedman_test": 100,
            "n_splits": 2,
            "hidden_friedman": 6,
            "hidden_diabetes": 4,
            "hidden_digits": 8,
            "epochs_friedman": 4,
            "epochs_diabetes": 4,
            "epochs_digits": 4,  # at least 3 calls per model: TF warns at 5 traces in 10 calls
            "every": 2,
            "structures_digits": ["kfac", "last_layer"],
            "ensemble_size": 2,
            "mc_samples": 5,
            "metrics_path": str(metrics_path),
        },
        timeout=240,
    )
    record = json.loads(metrics_path.read_text())
    metrics = record["metrics"]
    assert record["parameters"]["n_splits"] == 2
    assert set(metrics["friedman"]) == REGRESSION
    assert set(metrics["diabetes"]) == REGRESSION
    assert set(metrics["digits"]) == CLASSIFICATION
    for name in ("evidence-trained", "deep ensemble", "MC dropout"):
        row = metrics["friedman"][name]
        assert 0.0 <= row["coverage_95"] <= 1.0 and row["rmse"] > 0, name
        assert 0.0 <= metrics["digits"][name]["ece"] <= 1.0, name
    assert metrics["friedman"]["evidence-trained"]["beta"] > 0
    assert metrics["diabetes"]["evidence-trained"]["n"] == 2
    assert len(metrics["diabetes_nll_per_split"]["evidence-trained"]) == 2
    assert [h["epoch"] for h in metrics["friedman_history"]] == [2, 4]
    assert metrics["friedman_beta_true"] == 1.0
    assert metrics["digits_structure"] in ("kfac", "last_layer")
    assert set(metrics["digits_validation"]) == {
        "plain softmax",
        "evidence-trained (kfac)",
        "evidence-trained (last_layer)",
    }
    for row in metrics["digits_validation"].values():
        assert 0.0 <= row["ece"] <= 1.0 and row["nll"] > 0
    assert len(metrics["targets"]) == 5 and all(
        isinstance(ok, bool) for ok in metrics["targets"].values()
    )
