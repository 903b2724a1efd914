"""Deprecated alias of :mod:`sigma.sweep.records` and :mod:`sigma.sweep.table`.

Kept only because the import cells of notebooks 01, 02 and 04 still say ``import sigma.runs``
(their metrics cells use :func:`sigma.sweep.records.save_metrics`); remove it once those import
lines are gone. Names resolve on first use (PEP 562), so importing this module imports nothing
of :mod:`sigma.sweep`: the core never imports the sweep machinery.
"""

import importlib as _importlib

_MOVED = {
    "ERROR_FILE": "sigma.sweep.records",
    "FAILED_DIR": "sigma.sweep.records",
    "METRICS_FILE": "sigma.sweep.records",
    "git_state": "sigma.sweep.records",
    "package_versions": "sigma.sweep.records",
    "read_record": "sigma.sweep.records",
    "save_metrics": "sigma.sweep.records",
    "to_jsonable": "sigma.sweep.records",
    "write_json_atomic": "sigma.sweep.records",
    "load_failures": "sigma.sweep.table",
    "load_sweep": "sigma.sweep.table",
    "run_dirs": "sigma.sweep.table",
}


def __getattr__(name):
    if name in _MOVED:
        return getattr(_importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'sigma.runs' has no attribute {name!r}")
