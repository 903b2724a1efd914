"""Notebook tier: bigger networks (notebook 04), re-run by papermill with small parameters."""

import json

import pytest
from nbutil import ROOT, declared_parameters, run_notebook

NOTEBOOK = ROOT / "notebooks" / "04_bigger_networks.py"


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in (
        "n_synthetic",
        "hidden_big",
        "rank",
        "ranks",
        "batch_size",
        "max_memory",
        "metrics_path",
    ):
        assert name in params, name
    assert params["n_synthetic"]["default"] == "10000" and params["hidden_big"]["default"] == "256"
    assert params["max_memory"]["inferred_type_name"] == "float"


@pytest.mark.notebook
def test_runs_with_small_parameters_and_writes_metrics(tmp_path):
    """Tiny networks; max_memory = 1 GB so that full is refused on the "big" MLP (P = 13,002,
    ~5 GB) as it is at the defaults (P = 269,322, ~2.3 TB)."""
    metrics_path = tmp_path / "metrics.json"
    nb = run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "hidden_digits": 8,
            "epochs_digits": 1,
            "cnn_filters": 2,
            "cnn_hidden": 8,
            "n_synthetic": 300,
            "n_test": 50,
            "hidden_big": 16,
            "epochs_big": 1,
            "rank": 4,
            "ranks": [4, 8],
            "batch_size": 100,
            "max_memory": 1e9,
            "metrics_path": str(metrics_path),
        },
        timeout=240,
    )
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "structure='full' needs about" in text and "structures that fit" in text
    record = json.loads(metrics_path.read_text())
    metrics = record["metrics"]
    assert record["parameters"]["n_synthetic"] == 300
    assert {"full", "lowrank", "last_layer"} <= set(metrics["structures"])
    assert metrics["big_mlp_full_refused"] is True
    assert metrics["big_mlp"]["full"]["status"] == "refused"
    for table in ("digits_mlp", "digits_cnn"):
        rows = metrics[table]
        assert rows["full"]["sigma_rel_err_median"] == 0.0
        assert all(row["status"] == "ok" for row in rows.values())
    for name in ("diag", "kfac", "lowrank", "last_layer"):
        assert 0.0 <= metrics["big_mlp"][name]["coverage_95"] <= 1.0, name
    assert [row["rank"] for row in metrics["lowrank_rank_sweep"]] == [4, 8]
    variants = metrics["lowrank_variants"]
    assert set(variants) == {"full", "diag", "lowrank pure", "lowrank+diag"}
    assert (
        variants["full"]["sigma_rel_err_median"] == 0.0 and variants["full"]["alpha_vs_full"] == 1
    )
    for name in ("diag", "lowrank pure", "lowrank+diag"):
        assert variants[name]["status"] == "ok" and variants[name]["alpha"] > 0, name
