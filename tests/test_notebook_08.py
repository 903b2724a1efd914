"""Notebook tier: transformers and LoRA (notebook 08), re-run by papermill with tiny
parameters; checks the parameters papermill finds and the structure of the metrics the notebook
records (not the numbers it measures at its defaults)."""

import json

import pytest
from nbutil import ROOT, declared_parameters, outputs_text, run_notebook

NOTEBOOK = ROOT / "notebooks" / "08_transformers_and_lora.py"
SETS = {"shuffled", "out of vocabulary"}


def test_parameters_are_declared(tmp_path):
    params = declared_parameters(NOTEBOOK, tmp_path)
    for name in ("seed", "epochs", "vocab_size", "vocab_used", "length", "n_train", "lora_rank",
                 "structure", "positions", "link", "temperatures", "metrics_path"):  # fmt: skip
        assert name in params, name
    assert params["structure"]["default"] == '"kfac"'
    assert params["vocab_size"]["inferred_type_name"] == "int"
    assert params["learning_rate"]["inferred_type_name"] == "float"
    assert params["temperatures"]["default"] == "[1.0, 0.1, 0.01, 0.001, 0.0001]"


@pytest.mark.notebook
def test_runs_with_tiny_parameters_and_writes_metrics(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    nb = run_notebook(
        NOTEBOOK,
        tmp_path,
        {
            "vocab_size": 48,
            "vocab_used": 36,
            "length": 8,
            "n_markers": 3,
            "n_train": 128,
            "n_validation": 32,
            "n_test": 32,
            "width": 8,
            "feed_forward": 8,
            "epochs": 2,
            "temperatures": [1.0, 0.01],
            "n_finetune": 64,
            "finetune_epochs": 2,
            "lora_rank": 2,
            "metrics_path": str(metrics_path),
        },
        timeout=180,
    )
    text = outputs_text(nb)
    assert "fast (einsum)" in text and "fast (embedding)" in text and "lora_b" in text
    record = json.loads(metrics_path.read_text())
    m = record["metrics"]
    assert record["parameters"]["lora_rank"] == 2 and record["parameters"]["vocab_size"] == 48
    methods = {"softmax", "sigma, evidence", "softmax, LoRA", "sigma, LoRA, evidence"}
    assert methods <= set(m["results"]) and len(m["results"]) == 6
    for row in m["results"].values():
        assert 0 <= row["accuracy"] <= 1 and row["nll"] > 0 and 0 <= row["ece"] <= 1
        for data in SETS:
            assert 0 <= row[f"AUROC {data}"] <= 1
    assert {(r["data"], r["score"]) for r in m["detection"]} == {
        (d, s) for d in SETS for s in ("entropy", "1 − max p", "logit σ")
    }
    assert [r["temperature"] for r in m["temperature_scan"]] == [1.0, 0.01]
    assert m["temperature"] in (1.0, 0.01) and m["lora_temperature"] in (1.0, 0.01)
    assert m["n_adapter_params"] < m["n_params"]
    attention = {f"attention_0/{p}" for p in ("query", "key", "value", "attention_output")}
    assert set(m["lora_alpha"]) == attention | {"feed_forward_0_in", "feed_forward_0_out"}
