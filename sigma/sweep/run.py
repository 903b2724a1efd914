"""One run of a sweep: execute the notebook at one grid point, record it, move it into place.

A run is built in ``<sweep>/.tmp/<run>.<random>/`` and moved with ``os.replace`` when complete:

* to ``<sweep>/<run>/`` — the executed ``<stem>.ipynb``, its ``<stem>.html`` and
  ``metrics.json`` (:mod:`sigma.sweep.records`: the notebook's metrics, the parameters
  papermill recorded, the notebook's source hash, git state, versions, wall time);
* or, if anything raised, to ``<sweep>/failed/<run>/`` with ``error.json`` and the notebook up
  to the failing cell.

A run's identity is its name (the grid point) *and* the notebook's source hash: a finished run
whose ``metrics.json`` names another hash is stale and runs again. :func:`run_in_worker` is
what an executor (a local process pool or a Dask worker) calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sigma.sweep.notebook import (
    describe_error,
    error_traceback,
    execute_notebook,
    load_executed,
    notebook_sha256,
    render_html,
)
from sigma.sweep.records import (
    ERROR_FILE,
    FAILED_DIR,
    METRICS_FILE,
    METRICS_PARAMETER,
    TMP_DIR,
    RecordError,
    complete_record,
    git_state,
    package_versions,
    read_record,
    write_json_atomic,
)


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run (picklable; the notebook travels as JSON)."""

    name: str  # the run folder: run_name(parameters)
    parameters: dict  # the grid point: the values injected
    notebook_json: str
    notebook: str  # the notebook's file name, for the record
    notebook_sha256: str
    stem: str  # file names inside the run folder: <stem>.ipynb, <stem>.html
    sweep_dir: str  # absolute
    defaults: dict = field(default_factory=dict)  # every declared parameter's default
    wants_metrics_path: bool = False  # the notebook declares metrics_path
    timeout: float | None = None  # seconds per cell


@dataclass
class RunResult:
    """How one run ended: status is "done", "skipped" (finished before) or "failed"."""

    name: str
    parameters: dict
    status: str
    seconds: float = 0.0
    error: str | None = None


def run_state(run_dir, stem: str, sha256: str | None = None) -> str:
    """ "finished", "stale" (finished with another notebook version) or "missing".

    Finished means the notebook, its HTML and a readable ``metrics.json`` are all there and,
    if ``sha256`` is given, the record names that notebook hash.
    """
    run_dir = Path(run_dir)
    if not all((run_dir / f).is_file() for f in (f"{stem}.ipynb", f"{stem}.html", METRICS_FILE)):
        return "missing"
    if sha256 is None:
        return "finished"
    try:
        recorded = read_record(run_dir / METRICS_FILE).get("notebook_sha256")
    except RecordError:
        return "missing"
    return "finished" if recorded == sha256 else "stale"


def is_finished(run_dir, stem: str, sha256: str | None = None) -> bool:
    """Whether a run folder is complete (for notebook version ``sha256``, if given)."""
    return run_state(run_dir, stem, sha256) == "finished"


def execute_run(spec: RunSpec) -> RunResult:
    """Run one point of the grid: execute, record, render, then move into place.

    Never raises for a failing notebook: the result says what happened, and the run is in
    ``failed/<run>/``. An interrupt (KeyboardInterrupt, SystemExit) removes the scratch folder
    and propagates: nothing half-written is left.
    """
    import nbformat

    sweep_dir = Path(spec.sweep_dir)
    final = sweep_dir / spec.name
    if is_finished(final, spec.stem, spec.notebook_sha256):
        return RunResult(spec.name, spec.parameters, "skipped")
    start = time.time()
    tmp = sweep_dir / TMP_DIR / f"{spec.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    ipynb = tmp / f"{spec.stem}.ipynb"
    params = dict(spec.parameters)
    if spec.wants_metrics_path:
        params[METRICS_PARAMETER] = str(tmp / METRICS_FILE)
    try:
        try:
            nb = nbformat.reads(spec.notebook_json, 4)
            execute_notebook(nb, ipynb, params, timeout=spec.timeout)
            _retarget(ipynb, tmp, final)
            finish_record(
                tmp / METRICS_FILE,
                load_executed(ipynb),
                defaults=spec.defaults,
                notebook=spec.notebook,
                notebook_sha256=spec.notebook_sha256,
                expects_metrics=spec.wants_metrics_path,
            )
            render_html(ipynb, tmp / f"{spec.stem}.html")
        except Exception as exc:
            seconds = time.time() - start
            if ipynb.exists():
                with contextlib.suppress(Exception):  # the error record matters more
                    render_html(ipynb, tmp / f"{spec.stem}.html")
            error = describe_error(exc)
            record = error_record(spec, error, error_traceback(exc), seconds)
            write_json_atomic(tmp / ERROR_FILE, record)
            publish(tmp, sweep_dir / FAILED_DIR / spec.name)
            return RunResult(spec.name, spec.parameters, "failed", round(seconds, 1), error)
        publish(tmp, final)
        shutil.rmtree(sweep_dir / FAILED_DIR / spec.name, ignore_errors=True)
        return RunResult(spec.name, spec.parameters, "done", round(time.time() - start, 1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish_record(
    path, executed, *, defaults: dict, notebook: str, notebook_sha256: str, expects_metrics: bool
) -> dict:
    """Complete ``metrics.json`` at ``path`` from an executed notebook (see the records module).

    The parameters are ``defaults`` overlaid with the values papermill injected (its
    ``metadata.papermill.parameters``), without ``metrics_path``; the wall time is papermill's
    duration. Raises RuntimeError if the notebook declares ``metrics_path`` but saved nothing,
    :class:`~sigma.sweep.records.RecordError` if what it saved is unreadable.
    """
    path = Path(path)
    meta = executed.metadata.get("papermill", {})
    parameters = {**defaults, **(meta.get("parameters") or {})}
    parameters.pop(METRICS_PARAMETER, None)
    if expects_metrics and not path.is_file():
        raise RuntimeError(
            f"the notebook declares {METRICS_PARAMETER} but wrote no {METRICS_FILE}: end it with "
            f"sigma.sweep.records.save_metrics({METRICS_PARAMETER}, {{...}})"
        )
    return complete_record(
        path,
        parameters=parameters,
        metrics=None if expects_metrics else {},
        notebook=notebook,
        notebook_sha256=notebook_sha256,
        wall_time_s=meta.get("duration"),
    )


def record_executed(path, source, executed, notebook: str) -> dict:
    """:func:`finish_record` for a notebook executed outside a sweep (``source``: the
    NotebookNode before execution); used by the notebook tests."""
    from sigma.sweep.grid import declared_parameters, default_values

    declared = declared_parameters(source, notebook)
    return finish_record(
        path,
        load_executed(executed),
        defaults=default_values(declared),
        notebook=notebook,
        notebook_sha256=notebook_sha256(source),
        expects_metrics=METRICS_PARAMETER in declared,
    )


# papermill drives its kernel through an asyncio loop that is not safe to share between threads
# of one process ("This event loop is already running"): a process runs its notebooks one at a
# time, each on a loop of its own; run more worker processes for parallelism.
_ONE_NOTEBOOK_PER_PROCESS = threading.Lock()


def run_in_worker(spec: RunSpec) -> RunResult:
    """:func:`execute_run` as an executor calls it: one notebook at a time in this process, on
    its own event loop (never a Dask worker's running loop)."""
    with _ONE_NOTEBOOK_PER_PROCESS:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return execute_run(spec)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def fail_from_driver(spec: RunSpec, exc: BaseException) -> RunResult:
    """Record a run whose worker could not run it at all (the process died, the cluster lost
    it) in ``failed/<run>/error.json``; if even that cannot be written, say so in the result."""
    sweep_dir = Path(spec.sweep_dir)
    error = describe_error(exc)
    tmp = sweep_dir / TMP_DIR / f"{spec.name}.{uuid.uuid4().hex[:8]}"
    try:
        write_json_atomic(tmp / ERROR_FILE, error_record(spec, error, error_traceback(exc), None))
        publish(tmp, sweep_dir / FAILED_DIR / spec.name)
    except OSError as write_error:
        error += f" (and its error.json could not be written: {write_error})"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RunResult(spec.name, spec.parameters, "failed", 0.0, error)


def error_record(spec: RunSpec, error: str, traceback: str, seconds) -> dict:
    """The ``error.json`` of a failed run."""
    commit, dirty = git_state()
    return {
        "run": spec.name,
        "parameters": {**spec.defaults, **spec.parameters},
        "error": error,
        "traceback": traceback,
        "seconds": None if seconds is None else round(seconds, 3),
        "notebook": spec.notebook,
        "notebook_sha256": spec.notebook_sha256,
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": package_versions(),
    }


def publish(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an old ``dst`` (never half)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = src.parent / f"{src.name}.old"
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(src, dst)


def _retarget(ipynb: Path, tmp: Path, final: Path) -> None:
    """In the executed notebook, name the run folder it ends up in rather than the scratch one."""
    old, new = json.dumps(str(tmp))[1:-1], json.dumps(str(final))[1:-1]  # as escaped in JSON
    text = ipynb.read_text(encoding="utf-8")
    if old in text:
        ipynb.write_text(text.replace(old, new), encoding="utf-8")
