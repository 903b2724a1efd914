"""sigma.sweep.records and .table: what a notebook saves (JSON-safe, atomic), the record the
runner completes (provenance), unreadable records named, and a sweep read back."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from sigma.sweep import records, table


def test_no_path_writes_nothing_and_returns_the_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("", None):
        assert records.save_metrics(path, {"x": np.float32(2)}) == {"x": 2.0}
    assert list(tmp_path.iterdir()) == []


def test_saved_metrics_are_json_safe(tmp_path):
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
    saved = records.save_metrics(path, metrics)
    on_disk = json.loads(path.read_text())
    assert on_disk == {"metrics": saved}
    m = on_disk["metrics"]
    assert m["sigma"] == [0.5, 0.25]
    assert m["per_class"] == {"setosa": 0.1, "3": 7}
    assert m["pairs"] == [1, True] and m["grid"] == [[0, 1], [2, 3]] and m["where"] == "a/b"
    assert m["nan"] is None and m["inf"] is None  # JSON has no NaN
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left


def test_the_completed_record_has_provenance(tmp_path):
    path = tmp_path / "metrics.json"
    records.save_metrics(path, {"sigma": np.array([0.5, 0.25])})
    record = records.complete_record(
        path,
        parameters={"beta": 10.0, "epochs": np.int64(20)},
        notebook="nb.py",
        notebook_sha256="f" * 64,
        wall_time_s=5.25,
    )
    on_disk = json.loads(path.read_text())
    assert on_disk == record
    assert on_disk["metrics"] == {"sigma": [0.5, 0.25]}  # read back from what the notebook saved
    assert on_disk["parameters"] == {"beta": 10.0, "epochs": 20}
    assert on_disk["wall_time_s"] == 5.25 and on_disk["notebook_sha256"] == "f" * 64
    assert set(on_disk["versions"]) >= {"python", "tensorflow", "keras", "numpy", "sigma"}
    assert on_disk["versions"]["numpy"] == np.__version__
    commit = on_disk["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


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
        records.save_metrics(tmp_path / "m.json", metrics)
    assert not (tmp_path / "m.json").exists()


def test_metrics_must_be_a_dict():
    with pytest.raises(TypeError, match="metrics must be a dict"):
        records.save_metrics("", [1])


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.json"
    records.write_json_atomic(path, {"ok": 1})
    with pytest.raises(ValueError):  # allow_nan=False
        records.write_json_atomic(path, {"bad": math.nan})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_git_state_tolerates_no_repository_and_no_git(tmp_path, monkeypatch):
    assert records.git_state(tmp_path) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert records.git_state() == (None, None)


BAD_RECORDS = [
    (b"", "is empty"),
    (b"  \n", "is empty"),
    (b'{"metrics": {"x": 1', "is not valid JSON, truncated or corrupted"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "is not UTF-8 text"),
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b"3.5", "holds a JSON float, not an object"),
    (b'{"metrics": [1, 2]}', "its 'metrics' entry is a list"),
    (b'{"metrics": {}, "parameters": "beta=1"}', "its 'parameters' entry is a str"),
]


@pytest.mark.parametrize(("content", "reason"), BAD_RECORDS)
def test_an_unreadable_record_is_named_with_what_is_wrong(tmp_path, content, reason):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(records.RecordError, match=re.escape(f"{path}: {reason}")) as info:
        records.read_record(path)
    assert info.value.path == path and info.value.reason.startswith(reason)


def _write_run(sweep, name, parameters, metrics, wall=1.0):
    d = sweep / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "parameters": parameters,
                "metrics": metrics,
                "wall_time_s": wall,
                "git_commit": "abc",
                "notebook_sha256": "9" * 64,
            }
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

    t = table.load_sweep(sweep)
    assert list(t["run"]) == ["beta=1_epochs=2", "beta=10_epochs=2"]
    assert t.attrs["parameters"] == ["beta", "epochs"]
    assert t.attrs["metrics"] == [
        "sigma.setosa",
        "sigma.virginica",
        "per_output.0",
        "per_output.1",
        "log_evidence",
        "metrics.epochs",
    ]
    assert list(t.columns) == [
        "run",
        "beta",
        "epochs",
        *t.attrs["metrics"],
        "wall_time_s",
        "git_commit",
        "notebook_sha256",
    ]
    np.testing.assert_allclose(t["sigma.virginica"], [2.0, 0.2])
    assert t["log_evidence"].dtype == float and np.isnan(t["log_evidence"][0])
    assert list(t["metrics.epochs"]) == [99, 99] and list(t["epochs"]) == [2, 2]
    assert list(t["notebook_sha256"]) == ["9" * 64] * 2 and t.attrs["skipped"] == []


@pytest.mark.parametrize(("content", "reason"), BAD_RECORDS)
def test_load_sweep_skips_an_unreadable_record_and_names_it(tmp_path, content, reason):
    sweep = tmp_path / "nb"
    _write_run(sweep, "beta=1", {"beta": 1.0}, {"x": 1.0})
    bad = sweep / "beta=2" / "metrics.json"
    bad.parent.mkdir()
    bad.write_bytes(content)
    t = table.load_sweep(sweep)
    assert list(t["run"]) == ["beta=1"]  # the other runs are still there
    [(path, why)] = t.attrs["skipped"]
    assert path == bad and why.startswith(reason)


def test_load_sweep_of_nothing_is_an_empty_table(tmp_path):
    t = table.load_sweep(tmp_path / "missing")
    assert t.empty and t.attrs["parameters"] == [] and "run" in t
    assert table.load_failures(tmp_path / "missing").empty


def test_load_failures(tmp_path):
    d = tmp_path / "nb" / "failed" / "beta=2"
    d.mkdir(parents=True)
    records.write_json_atomic(
        d / "error.json", {"parameters": {"beta": 2.0}, "error": "RuntimeError: no", "seconds": 1.5}
    )
    bad = tmp_path / "nb" / "failed" / "beta=3" / "error.json"
    bad.parent.mkdir()
    bad.write_text('{"error": "trunc')
    failures = table.load_failures(tmp_path / "nb")
    assert failures.to_dict("records") == [
        {"run": "beta=2", "error": "RuntimeError: no", "seconds": 1.5, "beta": 2.0}
    ]
    [(path, why)] = failures.attrs["skipped"]
    assert path == bad and why.startswith("is not valid JSON")
