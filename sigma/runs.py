"""Deprecated alias of :mod:`sigma.sweep.records` and :mod:`sigma.sweep.table`.

Kept only because the import cells of notebooks 01, 02 and 04 still say ``import sigma.runs``;
their metrics cells use :func:`sigma.sweep.records.save_metrics`. Remove this module once
those import lines are gone. Nothing else in the package imports it.
"""

from sigma.sweep.records import (  # noqa: F401
    ERROR_FILE,
    FAILED_DIR,
    METRICS_FILE,
    git_state,
    package_versions,
    read_record,
    save_metrics,
    to_jsonable,
    write_json_atomic,
)
from sigma.sweep.table import load_failures, load_sweep, run_dirs  # noqa: F401
