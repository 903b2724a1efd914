"""A sweep folder read back as tables (pandas): one row per finished run, one per failed run.

A sweep folder holds ``<run>/metrics.json`` per finished run and ``failed/<run>/error.json``
per run that raised (:mod:`sigma.sweep.run`). A record that cannot be read (empty, truncated,
binary, not a JSON object) does not stop the others: it is left out and listed, with its path
and what is wrong, in ``table.attrs["skipped"]`` as ``(path, reason)`` pairs.
"""

from __future__ import annotations

from pathlib import Path

from sigma.sweep import require_notebooks_extra
from sigma.sweep.records import ERROR_FILE, FAILED_DIR, METRICS_FILE, RecordError, read_record

require_notebooks_extra()  # a clear message, not a ModuleNotFoundError deep inside

# Columns after the parameters and metrics, in this order.
RUN_COLUMNS = ("wall_time_s", "git_commit", "notebook_sha256")


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
    flattened with dots (``sigma_ggn_mean.0`` for σ per output recorded as a list,
    ``sigma.setosa`` for a dict), then ``wall_time_s``, ``git_commit`` and ``notebook_sha256``
    (the source hash of the notebook the run executed). A metric whose name is also a parameter
    is renamed ``metrics.<name>``. ``table.attrs["parameters"]`` and ``table.attrs["metrics"]``
    list the column names of each kind, ``table.attrs["skipped"]`` the unreadable records. A
    missing or empty folder gives an empty table with those attrs.
    """
    import pandas as pd

    rows, param_cols, metric_cols, skipped = [], [], [], []
    for d in run_dirs(sweep_dir):
        try:
            record = read_record(d / METRICS_FILE)
        except RecordError as exc:
            skipped.append((exc.path, exc.reason))
            continue
        params = dict(record.get("parameters") or {})
        metrics = _flatten(record["metrics"])
        metrics = {(f"metrics.{k}" if k in params else k): v for k, v in metrics.items()}
        _extend_unique(param_cols, params)
        _extend_unique(metric_cols, metrics)
        row = {"run": d.name, **params, **metrics}
        row.update({c: record.get(c) for c in RUN_COLUMNS})
        rows.append(row)
    columns = ["run", *param_cols, *metric_cols, *RUN_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    if rows:
        table = table.sort_values(param_cols or ["run"], kind="stable", ignore_index=True)
    for col in metric_cols:  # JSON null (non-finite) → NaN in numeric columns
        if table[col].map(lambda v: v is None or isinstance(v, int | float)).all():
            table[col] = table[col].astype(float)
    table.attrs["parameters"] = param_cols
    table.attrs["metrics"] = metric_cols
    table.attrs["skipped"] = skipped
    return table


def load_failures(sweep_dir):
    """The failed runs of a sweep (``<sweep>/failed/*/error.json``) as a DataFrame.

    Columns: ``run``, ``error`` (one line), ``seconds``, then the run's parameters.
    Unreadable ``error.json`` files are listed in ``attrs["skipped"]`` as (path, reason).
    """
    import pandas as pd

    rows, skipped = [], []
    failed = Path(sweep_dir) / FAILED_DIR
    if failed.is_dir():
        for d in sorted(failed.iterdir()):
            if d.is_dir() and (d / ERROR_FILE).is_file():
                try:
                    rec = read_record(d / ERROR_FILE, kind="error")
                except RecordError as exc:
                    skipped.append((exc.path, exc.reason))
                    continue
                rows.append(
                    {
                        "run": d.name,
                        "error": rec.get("error"),
                        "seconds": rec.get("seconds"),
                        **(rec.get("parameters") or {}),
                    }
                )
    table = pd.DataFrame(rows, columns=None if rows else ["run", "error", "seconds"])
    table.attrs["skipped"] = skipped
    return table


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
