"""sigma.runs: the metrics.json record (JSON-safe, atomic, provenance) and reading a sweep back."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from sigma import runs


def test_no_path_writes_nothing_and_returns_the_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("", None):
        record = runs.record_metrics(path, parameters={"beta": 1.0}, metrics={"x": np.float32(2)})
        assert record["parameters"] == {"beta": 1.0} and record["metrics"] == {"x": 2.0}
    assert list(tmp_path.iterdir()) == []


def test_record_is_json_safe_with_provenance(tmp_path):
    path = tmp_path / "run" / "metrics.json"  # the folder does not exist yet
    metrics = {
        "sigma": np.array([0.5, 0.25], dtype=np.float32),
        "per_class": {"setosa": np.float64(0.1), 3: np.int64(7)},
        "pairs": (1, np.bool_(True)),
        "nan": float("nan"),
        "inf": np.inf,
        "grid": np.arange(4).reshape(2, 2),
        "where": Path("a/b"),
    }
    record = runs.record_metrics(
        path,
        parameters={"beta": 10.0, "epochs": np.int64(20)},
        metrics=metrics,
        start=time.time() - 5,
    )
    on_disk = json.loads(path.read_text())
    assert on_disk == record
    assert on_disk["parameters"] == {"beta": 10.0, "epochs": 20}
    m = on_disk["metrics"]
    assert m["sigma"] == [0.5, 0.25]
    assert m["per_class"] == {"setosa": 0.1, "3": 7}
    assert m["pairs"] == [1, True] and m["grid"] == [[0, 1], [2, 3]] and m["where"] == "a/b"
    assert m["nan"] is None and m["inf"] is None  # JSON has no NaN
    assert 5.0 <= on_disk["wall_time_s"] < 60
    assert set(on_disk["versions"]) >= {"python", "tensorflow", "keras", "numpy", "sigma"}
    assert on_disk["versions"]["numpy"] == np.__version__
    commit = on_disk["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left


def test_wall_time_defaults_to_process_start(tmp_path):
    record = runs.record_metrics("", {}, {})
    assert record["wall_time_s"] is None or record["wall_time_s"] > 0


@pytest.mark.parametrize(
    ("metrics", "key"),
    [
        ({"model": object()}, r"metrics\['model'\]"),
        ({"a": {"b": [1, object()]}}, r"metrics\['a'\]\['b'\]\[1\]"),
        ({"s": np.array(["x", "y"])}, r"metrics\['s'\]"),
    ],
)
def test_unserialisable_value_is_refused_by_name(tmp_path, metrics, key):
    with pytest.raises(TypeError, match=key):
        runs.record_metrics(tmp_path / "m.json", {}, metrics)
    assert not (tmp_path / "m.json").exists()


def test_parameters_and_metrics_must_be_dicts():
    with pytest.raises(TypeError, match="must be dicts"):
        runs.record_metrics("", [1], {})


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.json"
    runs.write_json_atomic(path, {"ok": 1})
    with pytest.raises(ValueError):  # allow_nan=False
        runs.write_json_atomic(path, {"bad": math.nan})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_git_state_tolerates_no_repository_and_no_git(tmp_path, monkeypatch):
    assert runs.git_state(tmp_path) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert runs.git_state() == (None, None)


def _write_run(sweep, name, parameters, metrics, wall=1.0):
    d = sweep / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps(
            {"parameters": parameters, "metrics": metrics, "wall_time_s": wall, "git_commit": "abc"}
        )
    )
    return d


def test_load_sweep_flattens_and_sorts(tmp_path):
    sweep = tmp_path / "nb"
    for beta in (10.0, 1.0):
        _write_run(
            sweep,
            f"beta={beta:g}_epochs=2",
            {"beta": beta, "epochs": 2},
            {
                "sigma": {"setosa": 1 / beta, "virginica": 2 / beta},
                "per_output": [1.0, 2.0],
                "log_evidence": None if beta == 1.0 else -3.0,
                "epochs": 99,  # a metric named like a parameter
            },
        )
    _write_run(sweep / ".tmp", "beta=5_epochs=2", {"beta": 5.0, "epochs": 2}, {})  # scratch
    _write_run(sweep / "failed", "beta=7_epochs=2", {"beta": 7.0, "epochs": 2}, {})
    (sweep / "no_metrics").mkdir()

    table = runs.load_sweep(sweep)
    assert list(table["run"]) == ["beta=1_epochs=2", "beta=10_epochs=2"]
    assert table.attrs["parameters"] == ["beta", "epochs"]
    assert table.attrs["metrics"] == [
        "sigma.setosa",
        "sigma.virginica",
        "per_output.0",
        "per_output.1",
        "log_evidence",
        "metrics.epochs",
    ]
    assert list(table.columns) == [
        "run",
        "beta",
        "epochs",
        *table.attrs["metrics"],
        "wall_time_s",
        "git_commit",
    ]
    np.testing.assert_allclose(table["sigma.virginica"], [2.0, 0.2])
    assert table["log_evidence"].dtype == float and np.isnan(table["log_evidence"][0])
    assert list(table["metrics.epochs"]) == [99, 99] and list(table["epochs"]) == [2, 2]


def test_load_sweep_of_nothing_is_an_empty_table(tmp_path):
    table = runs.load_sweep(tmp_path / "missing")
    assert table.empty and table.attrs["parameters"] == [] and "run" in table
    assert runs.load_failures(tmp_path / "missing").empty


def test_load_failures(tmp_path):
    d = tmp_path / "nb" / "failed" / "beta=2"
    d.mkdir(parents=True)
    runs.write_json_atomic(
        d / "error.json", {"parameters": {"beta": 2.0}, "error": "RuntimeError: no", "seconds": 1.5}
    )
    failures = runs.load_failures(tmp_path / "nb")
    assert failures.to_dict("records") == [
        {"run": "beta=2", "error": "RuntimeError: no", "seconds": 1.5, "beta": 2.0}
    ]
