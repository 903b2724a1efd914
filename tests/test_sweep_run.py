"""sigma.sweep.run and .engine: the record a run leaves, the lock, and (notebook tier) running,
resuming, failing, re-running after the notebook changed, surviving a kill, stopping on
Ctrl-C, and the Dask engine — on tiny notebooks that start in a kernel's start-up time."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from conftest import terminal_sigint
from sweeputil import DATA, METRICS, PLAIN, ROOT, write_grid

from sigma.sweep import cli, engine, run
from sigma.sweep.notebook import notebook_sha256, read_notebook
from sigma.sweep.records import RecordError, save_metrics

pytestmark = pytest.mark.slow  # worker processes / notebook kernels

HOLD = DATA / "tiny_hold.py"  # waits while $TINY_HOLD_FILE exists


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    folder = tmp_path / "out" / "tiny_plain"
    folder.mkdir(parents=True)
    with engine.sweep_lock(folder), pytest.raises(RuntimeError, match="another sweep is running"):
        engine.run_sweep(grid, tmp_path / "out", progress=False)
    with engine.sweep_lock(folder):  # released again
        pass


def test_the_lock_is_a_filelock(tmp_path):
    import filelock

    with filelock.FileLock(tmp_path / ".lock", timeout=0), pytest.raises(engine.CannotRun):
        with engine.sweep_lock(tmp_path):
            pass


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers must be ≥ 1"):
        engine.run_sweep(write_grid(tmp_path, {"beta": [1.0]}), tmp_path / "out", workers=0)


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf"), True])
def test_timeout_must_be_positive_seconds(tmp_path, timeout):
    grid = write_grid(tmp_path, {"beta": [1.0]})
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        engine.run_sweep(grid, tmp_path / "out", timeout=timeout, progress=False)
    assert not (tmp_path / "out").exists()


# -- the record a run leaves ------------------------------------------------------------------


def _executed(parameters: dict, duration: float = 2.5) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": parameters, "duration": duration}
    return nb


def test_finish_record_takes_the_parameters_papermill_recorded(tmp_path):
    path = tmp_path / "metrics.json"
    defaults = {"beta": 1.0, "epochs": 1, "seed": 0}
    kwargs = {"defaults": defaults, "notebook": "nb.py", "notebook_sha256": "ab" * 32}
    # the notebook declares no metrics_path: the runner writes the record, parameters only
    record = run.finish_record(path, _executed({"beta": 2.0}), expects_metrics=False, **kwargs)
    on_disk = json.loads(path.read_text())
    assert on_disk == record and record["metrics"] == {}
    assert record["parameters"] == {"beta": 2.0, "epochs": 1, "seed": 0}  # defaults + injected
    assert record["notebook"] == "nb.py" and record["notebook_sha256"] == "ab" * 32
    assert record["wall_time_s"] == 2.5  # papermill's duration
    assert set(record["versions"]) >= {"python", "tensorflow", "keras", "numpy", "sigma"}
    # the notebook saved its metrics: they are kept, metrics_path is no parameter of the record
    save_metrics(path, {"x": 1})
    injected = {"epochs": 3, "metrics_path": str(path)}
    record = run.finish_record(path, _executed(injected), expects_metrics=True, **kwargs)
    assert json.loads(path.read_text())["metrics"] == {"x": 1} == record["metrics"]
    assert record["parameters"] == {"beta": 1.0, "epochs": 3, "seed": 0}
    # what it saved is unreadable: the error names the file
    path.write_text('{"metrics": {"x": 1')
    with pytest.raises(RecordError, match=rf"{path}: is not valid JSON"):
        run.finish_record(path, _executed(injected), expects_metrics=True, **kwargs)
    # the notebook declares metrics_path but saved nothing
    path.unlink()
    with pytest.raises(RuntimeError, match="wrote no metrics.json"):
        run.finish_record(path, _executed(injected), expects_metrics=True, **kwargs)


def _fake_run(folder: Path, sha: str | None, stem: str = "nb") -> Path:
    folder.mkdir(parents=True)
    (folder / f"{stem}.ipynb").write_text("{}")
    (folder / f"{stem}.html").write_text("")
    (folder / "metrics.json").write_text(json.dumps({"metrics": {}, "notebook_sha256": sha}))
    return folder


def test_a_run_of_another_notebook_version_is_stale(tmp_path):
    done = _fake_run(tmp_path / "a", "1" * 64)
    assert run.run_state(done, "nb", "1" * 64) == "finished" and run.is_finished(done, "nb")
    assert run.run_state(done, "nb", "2" * 64) == "stale"
    assert run.run_state(_fake_run(tmp_path / "b", None), "nb", "1" * 64) == "stale"  # old record
    (done / "metrics.json").write_text("")  # unreadable: run it again
    assert run.run_state(done, "nb", "1" * 64) == "missing"
    (done / "nb.html").unlink()
    assert run.run_state(done, "nb") == "missing"


def test_the_notebook_hash_follows_what_runs():
    nb = read_notebook(PLAIN)
    sha = notebook_sha256(nb)
    assert sha == notebook_sha256(read_notebook(PLAIN)) and len(sha) == 64
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x")]
    assert notebook_sha256(nb) == sha  # outputs are not the notebook's source
    nb.cells[-1].source += "\n"
    assert notebook_sha256(nb) != sha


# -- running (papermill) ----------------------------------------------------------------------


def _files(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file()
    }


TINY_PLAIN_DEFAULTS = {
    "beta": 1.0,
    "epochs": 1,
    "label": "a",
    "flag": False,
    "fail_at_beta": -1.0,
    "sleep_s": 0.0,
}


@pytest.mark.notebook
def test_sweep_runs_every_point_in_parallel_and_resumes(tmp_path):
    grid = write_grid(tmp_path, {"beta": [1.0, 2.0], "label": ["b"]})
    result = engine.run_sweep(grid, tmp_path / "out", workers=2, progress=False)
    assert [(r.name, r.status) for r in result.results] == [
        ("beta=1_label=b", "done"),
        ("beta=2_label=b", "done"),
    ]
    folder = tmp_path / "out" / "tiny_plain"
    assert result.sweep_dir == folder
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "beta=1_label=b", "beta=2_label=b"]
    one = folder / "beta=2_label=b"
    assert sorted(p.name for p in one.iterdir()) == [
        "metrics.json",
        "tiny_plain.html",
        "tiny_plain.ipynb",
    ]
    record = json.loads((one / "metrics.json").read_text())
    assert record["parameters"] == {**TINY_PLAIN_DEFAULTS, "beta": 2.0, "label": "b"}
    assert record["wall_time_s"] > 0 and record["notebook"] == "tiny_plain.py"
    assert record["notebook_sha256"] == notebook_sha256(read_notebook(PLAIN))
    executed = (one / "tiny_plain.ipynb").read_text()
    assert "beta=2.0 epochs=1 label=b flag=False" in executed  # the injected values were used
    assert "cdn" not in (one / "tiny_plain.html").read_text().split("<body")[0].lower()

    before = _files(folder)
    again = engine.run_sweep(grid, tmp_path / "out", workers=2, progress=False)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    assert _files(folder) == before  # nothing rewritten


@pytest.mark.notebook
def test_a_failing_run_is_recorded_and_the_sweep_carries_on(tmp_path, capsys):
    grid = write_grid(tmp_path, {"beta": [1.0, 2.0], "fail_at_beta": [2.0]})
    out = tmp_path / "out"
    code = cli.main(["grid", str(grid), "--out", str(out), "--workers", "2", "--quiet"])
    assert code == cli.RUNS_FAILED == 1
    err = capsys.readouterr().err
    assert "1 done, 0 skipped (finished before), 1 failed" in err
    assert "beta=2_fail_at_beta=2: RuntimeError: failing on purpose at beta=2.0 (cell [" in err

    folder = out / "tiny_plain"
    assert run.is_finished(folder / "beta=1_fail_at_beta=2", "tiny_plain")
    assert not (folder / "beta=2_fail_at_beta=2").exists()
    failed = folder / "failed" / "beta=2_fail_at_beta=2"
    assert sorted(p.name for p in failed.iterdir()) == [
        "error.json",
        "tiny_plain.html",
        "tiny_plain.ipynb",
    ]
    error = json.loads((failed / "error.json").read_text())
    assert error["parameters"] == {**TINY_PLAIN_DEFAULTS, "beta": 2.0, "fail_at_beta": 2.0}
    assert error["error"].startswith("RuntimeError: failing on purpose at beta=2.0")
    assert "raise RuntimeError" in error["traceback"] and "\x1b[" not in error["traceback"]
    assert not (folder / ".tmp").exists()

    # a rerun skips the finished run and tries the failed one again
    again = engine.run_sweep(grid, out, workers=2, progress=False)
    assert [r.status for r in again.results] == ["skipped", "failed"]


@pytest.mark.notebook
def test_a_notebook_records_its_own_metrics(tmp_path):
    grid = write_grid(tmp_path, {"laplace_beta": [10.0], "epochs": [2]}, notebook=METRICS)
    result = engine.run_sweep(grid, tmp_path / "out", progress=False, timeout=120)
    assert [r.status for r in result.results] == ["done"], result.results
    one = tmp_path / "out" / "tiny_metrics" / "epochs=2_laplace_beta=10"
    record = json.loads((one / "metrics.json").read_text())
    assert record["parameters"] == {"laplace_beta": 10.0, "epochs": 2, "seed": 0}
    assert set(record["metrics"]) == {"sigma_ggn_mean", "test_rmse", "coverage_95", "log_evidence"}
    assert record["metrics"]["log_evidence"] == pytest.approx(-2.0)
    assert 0.31 < record["metrics"]["sigma_ggn_mean"][0] < 0.33
    assert record["versions"]["tensorflow"] and record["wall_time_s"] > 0
    # the executed notebook names where its metrics ended up, not the scratch folder
    executed = (one / "tiny_metrics.ipynb").read_text()
    assert json.dumps(str(one / "metrics.json"))[1:-1] in executed and ".tmp" not in executed
    params = nbformat.read(one / "tiny_metrics.ipynb", as_version=4).metadata.papermill.parameters
    assert params["metrics_path"] == str(one / "metrics.json")  # papermill's own record


@pytest.mark.notebook
def test_a_changed_notebook_reruns_its_runs(tmp_path):
    notebook = tmp_path / "nb.py"
    shutil.copy(PLAIN, notebook)
    grid = write_grid(tmp_path, {"beta": [1.0]}, notebook=notebook)
    out, one = tmp_path / "out", tmp_path / "out" / "nb" / "beta=1"
    assert [r.status for r in engine.run_sweep(grid, out, progress=False).results] == ["done"]
    first = json.loads((one / "metrics.json").read_text())
    assert [r.status for r in engine.run_sweep(grid, out, progress=False).results] == ["skipped"]

    # a default that is not in the grid changes: the run is stale and runs again
    notebook.write_text(notebook.read_text().replace("epochs: int = 1", "epochs: int = 3"))
    assert [r.status for r in engine.run_sweep(grid, out, progress=False).results] == ["done"]
    second = json.loads((one / "metrics.json").read_text())
    assert second["notebook_sha256"] == notebook_sha256(read_notebook(notebook))
    assert second["notebook_sha256"] != first["notebook_sha256"]
    assert second["parameters"]["epochs"] == 3
    assert "beta=1.0 epochs=3" in (one / "nb.ipynb").read_text()
    assert [r.status for r in engine.run_sweep(grid, out, progress=False).results] == ["skipped"]


def _sweep_command(grid: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sigma.sweep", "grid", str(grid), "--out", str(out), *extra]


@pytest.mark.notebook
def test_a_killed_sweep_leaves_no_half_written_run(tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    grid = write_grid(tmp_path, {"hold": [True]}, notebook=HOLD)
    out = tmp_path / "out"
    folder = out / "tiny_hold"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _sweep_command(grid, out, "--quiet"),
            cwd=ROOT,
            env={**os.environ, "TINY_HOLD_FILE": str(hold)},
            start_new_session=True,
            stderr=err,
        )
    deadline = time.time() + 90
    while not (
        list(folder.glob(".tmp/*/tiny_hold.ipynb")) and Path(f"{hold}.started").exists()
    ):  # the run is under way: its kernel executes the hold cell
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    proc.wait()
    assert not (folder / "hold=true").exists() and not (folder / "failed").exists()

    hold.unlink()
    result = engine.run_sweep(grid, out, progress=False)  # the lock died with the process
    assert [r.status for r in result.results] == ["done"]
    assert run.is_finished(folder / "hold=true", "tiny_hold")
    assert not (folder / ".tmp").exists()  # the killed run's scratch folder is gone


def _processes_with(variable: str, value: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(variable) == value:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.notebook
def test_ctrl_c_stops_the_sweep_cleanly_and_a_rerun_resumes(tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    grid = write_grid(tmp_path, {"hold": [False, True]}, notebook=HOLD)
    out = tmp_path / "out"
    folder = out / "tiny_hold"
    env = {**os.environ, "TINY_HOLD_FILE": str(hold)}
    proc = subprocess.Popen(
        _sweep_command(grid, out, "--workers", "2"),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        preexec_fn=terminal_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (
        run.is_finished(folder / "hold=false", "tiny_hold")
        and list(folder.glob(".tmp/hold=true.*/tiny_hold.ipynb"))
        and Path(f"{hold}.started").exists()
    ):  # one run finished, the other under way (its kernel started and executing the hold cell)
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == cli.INTERRUPTED == 130, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1] == (
        "interrupted: 1 of 2 runs finished (1 in this sweep), 1 unfinished run was discarded; "
        "run the same command again to resume"
    ), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    # nothing half-written: the finished run, the lock, no scratch, no failed run
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "hold=false"]
    assert not _processes_with("TINY_HOLD_FILE", str(hold))  # workers and kernels are gone

    hold.unlink()
    again = engine.run_sweep(grid, out, workers=2, progress=False)
    assert [(r.name, r.status) for r in again.results] == [
        ("hold=false", "skipped"),
        ("hold=true", "done"),
    ]


@pytest.mark.notebook
def test_runs_can_go_to_a_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = write_grid(tmp_path, {"beta": [1.0, 2.0]})
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        result = engine.run_sweep(
            grid, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False
        )
        assert [(r.name, r.status) for r in result.results] == [
            ("beta=1", "done"),
            ("beta=2", "done"),
        ]
        again = engine.run_sweep(
            grid, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False
        )
        assert [r.status for r in again.results] == ["skipped", "skipped"]
    for name in ("beta=1", "beta=2"):
        assert run.is_finished(tmp_path / "out" / "tiny_plain" / name, "tiny_plain")
