"""Shared by the sweep tests: the tiny notebooks and a grid file written from a dict."""

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"
PLAIN = DATA / "tiny_plain.py"  # no sigma import, no metrics_path, may raise, sleep or hold
METRICS = DATA / "tiny_metrics.py"  # stands in for notebook 01: records the same metric names
ROOT = Path(__file__).resolve().parents[1]


def write_grid(tmp_path, parameters, notebook=PLAIN, **extra) -> Path:
    """A grid file in ``tmp_path`` (JSON is YAML)."""
    path = tmp_path / "grid.yaml"
    spec = {"notebook": str(notebook), "parameters": parameters, **extra}
    path.write_text(json.dumps(spec))
    return path
