"""sigma.sweep: grid validation, run names, and (notebook tier) running, resuming, failing,
surviving a kill, and the Dask engine — on tiny notebooks that start in a kernel's start-up."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sigma import sweep
from sigma.reports import read_notebook

DATA = Path(__file__).parent / "data"
PLAIN = DATA / "tiny_plain.py"  # no sigma import, no metrics_path, may raise or sleep
METRICS = DATA / "tiny_metrics.py"  # ends with sigma.runs.record_metrics
ROOT = Path(__file__).resolve().parents[1]


def write_grid(tmp_path, parameters, notebook=PLAIN, **extra) -> Path:
    path = tmp_path / "grid.yaml"
    spec = {"notebook": str(notebook), "parameters": parameters, **extra}
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# -- names and ranges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10.0, "10"),
        (0.5, "0.5"),
        (1e-3, "0.001"),
        (1e-8, "1e-08"),
        (2.5e16, "2.5e+16"),
        (20, "20"),
        (True, "true"),
        ("ggn", "ggn"),
        (-1.0, "-1"),
    ],
)
def test_format_value(value, text):
    assert sweep.format_value(value) == text


def test_run_name_is_sorted_and_compact():
    assert sweep.run_name({"epochs": 20, "beta": 10.0, "seed": 0}) == "beta=10_epochs=20_seed=0"


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("noise precision, > 0", [1e-9, 5.0], [0.0, -1.0]),
        ("passes, ≥ 1", [1, 100], [0]),
        ("fraction held out, in (0, 1)", [0.5], [0.0, 1.0]),
        ("in [1, 100]", [1, 100], [0.5, 101]),
        ("in [0, inf)", [0.0, 1e300], [-1e-9]),
        ("a probability ≤ 1", [1.0, -5.0], [1.01]),
    ],
)
def test_parse_range(text, inside, outside):
    rng = sweep.parse_range(text)
    assert all(v in rng for v in inside) and not any(v in rng for v in outside)


def test_parse_range_none():
    assert sweep.parse_range("where to write metrics.json (empty: nowhere)") is None
    assert sweep.parse_range("the original's β (of Keras' mean squared error)") is None


def test_declared_parameters_read_types_defaults_and_ranges():
    declared = sweep.declared_parameters(read_notebook(PLAIN))
    assert list(declared) == ["beta", "epochs", "label", "flag", "fail_at_beta", "sleep_s"]
    assert [declared[n].type for n in declared] == ["float", "int", "str", "bool", "float", "float"]
    assert declared["beta"].default == 1.0 and declared["label"].default == "a"
    assert str(declared["beta"].range) == "> 0" and str(declared["epochs"].range) == "≥ 1"
    assert declared["fail_at_beta"].range is None


def test_known_ranges_apply_when_the_comment_states_none(tmp_path):
    nb = tmp_path / "nb.py"
    nb.write_text('# %% tags=["parameters"]\nseed = 0  # random seed\nalpha: float = 1.0\n')
    declared = sweep.declared_parameters(read_notebook(nb))
    assert declared["seed"].type == "int"  # from the literal default
    assert str(declared["seed"].range) == "≥ 0" and str(declared["alpha"].range) == "≥ 0"
    assert declared["seed"].range_source == "sigma.sweep.KNOWN_RANGES"


def test_a_parameter_line_papermill_cannot_read_is_refused(tmp_path):
    nb = tmp_path / "nb.py"
    nb.write_text('# %% tags=["parameters"]\nbeta: float = 1.0\nepochs: int = 2  # >= 1\n')
    with pytest.raises(ValueError, match=r"papermill cannot read the parameter line 'epochs: int"):
        sweep.declared_parameters(read_notebook(nb), "nb.py")


# -- bad grids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"gamma": [1.0]},
            r"'gamma' is not declared.*declared: beta, epochs, label, flag, fail_at_beta, sleep_s$",
        ),
        ({"beta": ["x"]}, r"parameter 'beta', value 0: 'x' is not a number"),
        ({"beta": [1.0, True]}, r"parameter 'beta', value 1: True is not a number"),
        ({"epochs": [1.5]}, r"1.5 is not an int"),
        ({"epochs": [True]}, r"True is not an int"),
        ({"flag": [1]}, r"1 is not true/false"),
        ({"label": [3]}, r"3 is not a string"),
        ({"beta": [-1.0]}, r"-1.0 is out of range: beta must be > 0 \(from its comment"),
        ({"epochs": [0]}, r"0 is out of range: epochs must be ≥ 1"),
        ({"beta": ".nan"}, r"'beta' must be a non-empty list of values"),
        ({"beta": [float("nan")]}, r"nan is not finite"),
        ({"beta": 1.0}, r"'beta' must be a non-empty list of values, got 1.0 \(write \[1.0\]"),
        ({"beta": []}, r"'beta' must be a non-empty list"),
        ({"beta": [None]}, r"None is not a single value"),
        ({"beta": [[1.0, 2.0]]}, r"\[1.0, 2.0\] is not a single value"),
        ({"beta": [1, 1.0]}, r"lists 1 and 1.0, the same value twice"),
        ({"label": ["a/b"]}, r"'a/b' cannot go in a run folder name"),
        ({"label": [".hidden"]}, r"cannot go in a run folder name"),
        ({}, r"'parameters' must map each parameter name to a list"),
    ],
)
def test_bad_grid_values_are_refused_before_anything_runs(tmp_path, parameters, message):
    grid = write_grid(tmp_path, parameters)
    with pytest.raises(ValueError, match=message):
        sweep.run_sweep(grid, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_metrics_path_belongs_to_the_runner(tmp_path):
    grid = write_grid(tmp_path, {"metrics_path": ["x.json"]}, notebook=METRICS)
    with pytest.raises(ValueError, match="'metrics_path' is set by the sweep runner"):
        sweep.load_grid(grid)


def test_bad_grid_files(tmp_path):
    path = tmp_path / "g.yaml"
    cases = [
        ("notebook: x.py\nparameters: {beta: [1.0]}\nworkers: 2\n", r"unknown key\(s\) 'workers'"),
        ("parameters: {beta: [1.0]}\n", r"missing 'notebook'"),
        (f"notebook: {PLAIN}\n", r"missing 'parameters'"),
        ("notebook: nowhere.py\nparameters: {beta: [1.0]}\n", r"notebook nowhere.py not found"),
        ("- 1\n- 2\n", r"expected a mapping"),
        ("notebook: [\n", r"not valid YAML"),
        (
            f"notebook: {PLAIN}\nname: a/b\nparameters: {{beta: [1.0]}}\n",
            r"'name' must be a folder",
        ),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            sweep.load_grid(path)
    with pytest.raises(ValueError, match="does not exist"):
        sweep.load_grid(tmp_path / "missing.yaml")


def test_grid_values_are_typed_and_multiplied_out(tmp_path):
    grid = sweep.load_grid(
        write_grid(tmp_path, {"beta": [1, "1e-3"], "epochs": [1, 2, 3], "flag": [True]})
    )
    assert grid.name == "tiny_plain" and grid.parameters["beta"] == (1.0, 0.001)
    points = grid.points()
    assert len(points) == 6 and points[0] == {"beta": 1.0, "epochs": 1, "flag": True}
    assert isinstance(points[0]["beta"], float)
    assert len({sweep.run_name(p) for p in points}) == 6


def test_the_default_grid_fits_notebook_01(monkeypatch):
    monkeypatch.chdir(ROOT)  # the grid names its notebook relative to the repository root
    grid = sweep.load_grid("sweeps/beta_epochs.yaml")
    assert grid.notebook == Path("notebooks/01_original.py") and len(grid.points()) >= 2
    assert "metrics_path" in grid.declared  # so the notebook writes its own metrics.json


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    folder = tmp_path / "out" / "tiny_plain"
    folder.mkdir(parents=True)
    with sweep._locked(folder), pytest.raises(RuntimeError, match="another sweep is running"):
        sweep.run_sweep(grid, tmp_path / "out", progress=False)


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be ≥ 1"):
        sweep.run_sweep(write_grid(tmp_path, {"beta": [1.0]}), tmp_path / "out", workers=0)


# -- the record a run leaves ------------------------------------------------------------------


def test_complete_metrics(tmp_path):
    path = tmp_path / "metrics.json"
    # the notebook declares no metrics_path: the runner writes the record
    record = sweep.complete_metrics(path, {"beta": 1.0}, False, time.time())
    assert json.loads(path.read_text())["parameters"] == {"beta": 1.0} and record["metrics"] == {}
    # the notebook recorded only some parameters: the run's are added
    path.write_text(json.dumps({"parameters": {"seed": 0}, "metrics": {"x": 1}}))
    sweep.complete_metrics(path, {"beta": 1.0, "seed": 0}, True, 0.0)
    assert json.loads(path.read_text())["parameters"] == {"seed": 0, "beta": 1.0}
    # the notebook recorded another value than the run set: it ignored the injected parameter
    path.write_text(json.dumps({"parameters": {"beta": 10.0}, "metrics": {}}))
    with pytest.raises(RuntimeError, match="recorded beta=10.0 but the run set beta=1.0"):
        sweep.complete_metrics(path, {"beta": 1.0}, True, 0.0)
    path.unlink()
    with pytest.raises(RuntimeError, match="wrote no metrics.json"):
        sweep.complete_metrics(path, {"beta": 1.0}, True, 0.0)


# -- running (papermill) ----------------------------------------------------------------------


def _files(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.notebook
def test_sweep_runs_every_point_in_parallel_and_resumes(tmp_path):
    grid = write_grid(tmp_path, {"beta": [1.0, 2.0], "label": ["b"]})
    result = sweep.run_sweep(grid, tmp_path / "out", workers=2, progress=False)
    assert [(r.name, r.status) for r in result.results] == [
        ("beta=1_label=b", "done"),
        ("beta=2_label=b", "done"),
    ]
    folder = tmp_path / "out" / "tiny_plain"
    assert result.sweep_dir == folder
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "beta=1_label=b", "beta=2_label=b"]
    run = folder / "beta=2_label=b"
    assert sorted(p.name for p in run.iterdir()) == [
        "metrics.json",
        "tiny_plain.html",
        "tiny_plain.ipynb",
    ]
    record = json.loads((run / "metrics.json").read_text())
    assert record["parameters"] == {"beta": 2.0, "label": "b"} and record["wall_time_s"] > 0
    executed = (run / "tiny_plain.ipynb").read_text()
    assert "beta=2.0 epochs=1 label=b flag=False" in executed  # the injected values were used
    assert "cdn" not in (run / "tiny_plain.html").read_text().split("<body")[0].lower()

    before = _files(folder)
    again = sweep.run_sweep(grid, tmp_path / "out", workers=2, progress=False)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    assert _files(folder) == before  # nothing rewritten


@pytest.mark.notebook
def test_a_failing_run_is_recorded_and_the_sweep_carries_on(tmp_path, capsys):
    grid = write_grid(tmp_path, {"beta": [1.0, 2.0], "fail_at_beta": [2.0]})
    out = tmp_path / "out"
    code = sweep.main([str(grid), "--out", str(out), "--workers", "2", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "1 done, 0 skipped (finished before), 1 failed" in err
    assert "beta=2_fail_at_beta=2: RuntimeError: failing on purpose at beta=2.0 (cell [" in err

    folder = out / "tiny_plain"
    assert sweep.is_finished(folder / "beta=1_fail_at_beta=2", "tiny_plain")
    assert not (folder / "beta=2_fail_at_beta=2").exists()
    failed = folder / "failed" / "beta=2_fail_at_beta=2"
    assert sorted(p.name for p in failed.iterdir()) == [
        "error.json",
        "tiny_plain.html",
        "tiny_plain.ipynb",
    ]
    error = json.loads((failed / "error.json").read_text())
    assert error["parameters"] == {"beta": 2.0, "fail_at_beta": 2.0}
    assert error["error"].startswith("RuntimeError: failing on purpose at beta=2.0")
    assert "raise RuntimeError" in error["traceback"] and "\x1b[" not in error["traceback"]
    assert not (folder / ".tmp").exists()

    # a rerun skips the finished run and tries the failed one again
    again = sweep.run_sweep(grid, out, workers=2, progress=False)
    assert [r.status for r in again.results] == ["skipped", "failed"]


@pytest.mark.notebook
def test_a_notebook_records_its_own_metrics(tmp_path):
    grid = write_grid(tmp_path, {"beta": [10.0], "epochs": [2]}, notebook=METRICS)
    result = sweep.run_sweep(grid, tmp_path / "out", progress=False, timeout=120)
    assert [r.status for r in result.results] == ["done"], result.results
    run = tmp_path / "out" / "tiny_metrics" / "beta=10_epochs=2"
    record = json.loads((run / "metrics.json").read_text())
    assert record["parameters"] == {"beta": 10.0, "epochs": 2, "seed": 0}
    assert set(record["metrics"]) == {"sigma", "test_error", "coverage", "log_evidence"}
    assert record["metrics"]["log_evidence"] == pytest.approx(-2.0)
    assert 0.31 < record["metrics"]["sigma"]["setosa"] < 0.33
    assert record["versions"]["tensorflow"] and record["wall_time_s"] > 0
    # the executed notebook names where its metrics ended up, not the scratch folder
    executed = (run / "tiny_metrics.ipynb").read_text()
    assert json.dumps(str(run / "metrics.json"))[1:-1] in executed and ".tmp" not in executed


@pytest.mark.notebook
def test_a_killed_sweep_leaves_no_half_written_run(tmp_path):
    grid = write_grid(tmp_path, {"beta": [1.0], "sleep_s": [4.0]})
    out = tmp_path / "out"
    folder = out / "tiny_plain"
    # `python -m sigma.sweep`, minus sigma/__init__.py: it imports TensorFlow (~8 s), which the
    # runner does not use.
    script = (
        "import sys, types; sigma = types.ModuleType('sigma'); "
        f"sigma.__path__ = [{str(Path(sweep.__file__).parent)!r}]; sys.modules['sigma'] = sigma; "
        "from sigma.sweep import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", script, str(grid), "--out", str(out), "--quiet"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, start_new_session=True, stderr=err)
    deadline = time.time() + 90
    while not list(folder.glob(".tmp/*/tiny_plain.ipynb")):  # the run has started
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its kernel
    proc.wait()
    assert not (folder / "beta=1_sleep_s=4").exists() and not (folder / "failed").exists()

    result = sweep.run_sweep(grid, out, progress=False)  # the lock died with the process
    assert [r.status for r in result.results] == ["done"]
    assert sweep.is_finished(folder / "beta=1_sleep_s=4", "tiny_plain")
    assert not (folder / ".tmp").exists()  # the killed run's scratch folder is gone


@pytest.mark.notebook
def test_runs_can_go_to_a_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = write_grid(tmp_path, {"beta": [1.0, 2.0]})
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        result = sweep.run_sweep(
            grid, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False
        )
        assert [(r.name, r.status) for r in result.results] == [
            ("beta=1", "done"),
            ("beta=2", "done"),
        ]
        again = sweep.run_sweep(
            grid, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False
        )
        assert [r.status for r in again.results] == ["skipped", "skipped"]
    for name in ("beta=1", "beta=2"):
        assert sweep.is_finished(tmp_path / "out" / "tiny_plain" / name, "tiny_plain")
