"""Notebook tier: classifiers under shift (notebook 06), re-run by papermill with tiny
parameters; checks the structure of its tables and recorded metrics (not the issue's targets,
which the notebook measures at its defaults)."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

NOTEBOOK = ROOT / "notebooks" / "06_classifiers_under_shift.py"
METHODS = {"MAP softmax", "temperature scaling", "deep ensemble", "MC dropout", "sigma"}


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in ("seeds", "epochs", "ensemble_size", "mc_samples", "angles", "noise_levels",
                 "structure", "link", "metrics_path"):  # fmt: skip
        assert name in params, name
    assert params["seeds"]["default"] == "[0, 1, 2, 3, 4]"
    assert params["ensemble_size"]["default"] == "5"
    assert params["angles"]["default"] == "[0, 15, 30, 45, 60, 75, 90]"
    assert params["metrics_path"]["inferred_type_name"] == "str"


@pytest.mark.notebook
def test_runs_with_tiny_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "seeds": [0],
            "epochs": 5,  # 5 compiled calls per model: fewer and TF warns about retracing
            "hidden": 8,
            "ensemble_size": 2,
            "mc_samples": 5,
            "angles": [0, 45],
            "noise_levels": [0.2],
            "iris_epochs": 5,
            "metrics_path": str(metrics_path),
        },
        timeout=120,
    )
    record = json.loads(metrics_path.read_text())
    m = record["metrics"]
    assert record["parameters"]["seeds"] == [0]
    assert set(m["in_distribution"]) == METHODS and set(m["iris"]) == METHODS
    for row in m["in_distribution"].values():
        assert 0 <= row["ece"] <= 1 and row["nll"] > 0 and 0 <= row["accuracy"] <= 1
    shifts = {(r["method"], r["shift"], r["level"]) for r in m["shift"]}
    assert shifts == {(me, s, lv) for me in METHODS
                      for s, lv in (("rotation", 0.0), ("rotation", 45.0), ("noise", 0.2))}  # fmt: skip
    ood = {(r["method"], r["data"], r["score"]) for r in m["ood"]}
    assert len(ood) == len(METHODS) * 2 * 2
    assert all(0 <= r["auroc"] <= 1 and 0 <= r["fpr95"] <= 1 for r in m["ood"])
    assert len(m["targets"]) == 8 and all(isinstance(v, bool) for v in m["targets"].values())
    assert set(m["targets"]) == set(m["target_margins"])
    assert "tempered, KFAC all layers, mean field" in m["recipes"]
    assert len(m["temperatures"]) == 1 and 0 < m["temperatures"][0] <= 1
