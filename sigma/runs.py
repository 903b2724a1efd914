"""Run records: the ``metrics.json`` an executed notebook leaves behind, and a sweep read back.

A notebook declares ``metrics_path: str = ""`` in its parameters cell and ends with one line::

    sigma.runs.record_metrics(metrics_path, parameters={...}, metrics={...})

The sweep runner (:mod:`sigma.sweep`) sets ``metrics_path`` to ``<run folder>/metrics.json``;
run interactively it stays empty and nothing is written. The record is::

    {"parameters": {...}, "metrics": {...}, "wall_time_s": float | null,
     "finished_at": "2026-...Z", "git_commit": "hex" | null, "git_dirty": bool | null,
     "host": "...", "versions": {"python": ..., "tensorflow": ..., "keras": ..., ...}}

Metric names the sweep report (:mod:`sigma.sweep_plots`) reads, when the notebook has them:

* ``sigma`` — σ per output: a list (K,) or a dict {output name: σ}, e.g. the mean over the
  held-out inputs of the predictive σ_k(x);
* ``test_error`` — held-out error (float), ``coverage`` — fraction of held-out targets inside
  the error bars (float), ``log_evidence`` — ln p(D | α, β) (float).

Non-finite floats are stored as ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.json"
FAILED_DIR = "failed"  # <sweep>/failed/<run>/error.json: runs that raised (see sigma.sweep)
ERROR_FILE = "error.json"
# Recorded with every result; a name may be provided by several distributions (tensorflow-cpu).
VERSIONED_PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "sigma": ("sigma",),
}


def record_metrics(path, parameters: dict, metrics: dict, *, start: float | None = None) -> dict:
    """Write ``metrics.json`` for one run (atomically) and return the record.

    path : where to write; ``""`` or ``None`` writes nothing (interactive use) and only returns
        the record. Parent folders are created.
    parameters : the notebook's parameters, {name: scalar}.
    metrics : what the notebook computed, {name: scalar, list, array or nested dict}; NumPy
        arrays and scalars are converted to JSON lists and numbers.
    start : ``time.time()`` at which the wall time starts; default: when the process (the
        kernel) started, or ``None`` if that cannot be read.

    Raises TypeError naming the key of a value that cannot be stored as JSON.
    """
    if not isinstance(parameters, dict) or not isinstance(metrics, dict):
        raise TypeError(
            "parameters and metrics must be dicts, got "
            f"{type(parameters).__name__} and {type(metrics).__name__}"
        )
    if start is None:
        start = _process_start_time()
    commit, dirty = git_state()
    record = {
        "parameters": to_jsonable(parameters, "parameters"),
        "metrics": to_jsonable(metrics, "metrics"),
        "wall_time_s": None if start is None else round(time.time() - start, 3),
        "finished_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": platform.node(),
        "versions": package_versions(),
    }
    if path:
        write_json_atomic(path, record)
    return record


def to_jsonable(value, name: str = "value"):
    """``value`` with NumPy arrays/scalars, tuples and paths turned into JSON types.

    Dict keys become strings; non-finite floats become ``None``. ``name`` is the key path used
    in the TypeError raised for anything else (e.g. a Keras model).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return to_jsonable(arr.tolist(), name)
    raise TypeError(f"{name} is a {type(value).__name__}, which cannot be stored in metrics.json")


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``.

    A reader (or a killed writer) never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def git_state(cwd=None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding ``cwd`` (default: this package's folder).

    ``(None, None)`` when git or the repository is missing; dirty means tracked files differ
    from the commit.
    """
    cwd = Path(__file__).resolve().parent if cwd is None else Path(cwd)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip(), dirty


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that shape a result (``None`` if not installed)."""
    versions = {"python": platform.python_version()}
    for name, distributions in VERSIONED_PACKAGES.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def read_record(path) -> dict:
    """Read one ``metrics.json``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_dirs(sweep_dir) -> list[Path]:
    """The finished run folders of a sweep: sub-folders holding a ``metrics.json``, sorted."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    return sorted(
        d
        for d in sweep_dir.iterdir()
        if d.is_dir() and not d.name.startswith(".") and (d / METRICS_FILE).is_file()
    )


def load_sweep(sweep_dir):
    """All finished runs of a sweep as a pandas DataFrame, one row per run.

    Columns: ``run`` (folder name), one per parameter, one per metric with nested values
    flattened with dots (``sigma.setosa`` or ``sigma.0`` for σ per output), then
    ``wall_time_s`` and ``git_commit``. A metric whose name is also a parameter is renamed
    ``metrics.<name>``. ``table.attrs["parameters"]`` and ``table.attrs["metrics"]`` list the
    column names of each kind. A missing or empty folder gives an empty table with those attrs.
    """
    import pandas as pd

    rows, param_cols, metric_cols = [], [], []
    for d in run_dirs(sweep_dir):
        record = read_record(d / METRICS_FILE)
        params = dict(record.get("parameters") or {})
        metrics = _flatten(record.get("metrics") or {})
        metrics = {(f"metrics.{k}" if k in params else k): v for k, v in metrics.items()}
        _extend_unique(param_cols, params)
        _extend_unique(metric_cols, metrics)
        row = {"run": d.name, **params, **metrics}
        row["wall_time_s"] = record.get("wall_time_s")
        row["git_commit"] = record.get("git_commit")
        rows.append(row)
    columns = ["run", *param_cols, *metric_cols, "wall_time_s", "git_commit"]
    table = pd.DataFrame(rows, columns=columns)
    if rows:
        table = table.sort_values(param_cols or ["run"], kind="stable", ignore_index=True)
    for col in metric_cols:  # JSON null (non-finite) → NaN in numeric columns
        if table[col].map(lambda v: v is None or isinstance(v, int | float)).all():
            table[col] = table[col].astype(float)
    table.attrs["parameters"] = param_cols
    table.attrs["metrics"] = metric_cols
    return table


def load_failures(sweep_dir):
    """The failed runs of a sweep (``<sweep>/failed/*/error.json``) as a DataFrame.

    Columns: ``run``, ``error`` (one line), ``seconds``, then the run's parameters.
    """
    import pandas as pd

    rows = []
    failed = Path(sweep_dir) / FAILED_DIR
    if failed.is_dir():
        for d in sorted(failed.iterdir()):
            if d.is_dir() and (d / ERROR_FILE).is_file():
                rec = read_record(d / ERROR_FILE)
                rows.append(
                    {
                        "run": d.name,
                        "error": rec.get("error"),
                        "seconds": rec.get("seconds"),
                        **(rec.get("parameters") or {}),
                    }
                )
    return pd.DataFrame(rows, columns=None if rows else ["run", "error", "seconds"])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
            out.update({f"{name}.{i}": v for i, v in enumerate(value)})
        else:
            out[name] = value
    return out


def _extend_unique(names: list, keys) -> None:
    names.extend(k for k in keys if k not in names)


def _process_start_time() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process(os.getpid()).create_time()
