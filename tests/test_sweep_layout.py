"""The shape of sigma.sweep: its modules depend on each other one way only, it loads neither
TensorFlow nor the numerical core, and the core never imports it."""

import ast
import subprocess
import sys
from pathlib import Path

from sweeputil import ROOT

PACKAGE = ROOT / "sigma"
SWEEP = PACKAGE / "sweep"
# Each module may import only modules listed before it.
LAYERS = ["records", "notebook", "grid", "table", "plots", "run", "engine", "report", "cli"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_every_module_of_the_subpackage_is_in_a_layer():
    modules = {p.stem for p in SWEEP.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(LAYERS)


def test_dependencies_inside_the_subpackage_point_one_way():
    for i, name in enumerate(LAYERS):
        used = {
            m.split(".")[2]
            for m in imported_modules(SWEEP / f"{name}.py")
            if m.startswith("sigma.sweep.") and m.split(".")[2] in LAYERS
        }
        later = used - set(LAYERS[:i])
        assert not later, f"sigma.sweep.{name} imports {sorted(later)}, which come after it"


# Leaf modules of NumPy and the standard library that every layer may use
# (tests/test_architecture.py's "shared" layer).
SHARED = {"sigma.jsonable"}


def test_the_subpackage_imports_nothing_of_the_core():
    for path in SWEEP.glob("*.py"):
        imported = imported_modules(path)
        outside = {
            m
            for m in imported
            if m.startswith("sigma.") and not m.startswith("sigma.sweep") and m not in SHARED
        }
        if "sigma" in imported and not any(m.startswith("sigma.") for m in imported):
            outside.add("sigma")  # a bare `import sigma`
        assert not outside, f"{path.name} imports {sorted(outside)}"
        assert not {m for m in imported_modules(path) if m.split(".")[0] in ("tensorflow", "keras")}


def test_the_core_never_imports_the_subpackage():
    for path in PACKAGE.glob("*.py"):
        if path.name == "runs.py":  # the alias kept for the notebooks' import cells
            continue
        sweep = {m for m in imported_modules(path) if m.startswith("sigma.sweep")}
        assert not sweep, f"sigma/{path.name} imports {sorted(sweep)}"


def test_importing_the_sweep_machinery_loads_no_tensorflow():
    """Nor does the sweep report's notebook: a report renders without starting TensorFlow."""
    report_imports = [
        ast.unparse(node)
        for node in ast.parse((ROOT / "notebooks" / "03_sweep_report.py").read_text()).body
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert any("sigma" in line for line in report_imports), report_imports
    code = (
        "import sys, sigma.sweep, sigma.sweep.__main__\n"
        "from sigma.sweep import records, notebook, grid, table, plots, run, engine, report, cli\n"
        + "".join(line + "\n" for line in report_imports)
        + "heavy = sorted(m for m in ('tensorflow', 'keras', 'sigma.laplace', 'sigma.curvature')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_sweep_workers_read_notebooks_without_the_iri_grammars():
    """jsonschema's optional rfc3987_syntax costs ~3 s of import in every process that reads a
    notebook: a worker marks it absent and still reads, validates and writes notebooks."""
    code = (
        "import sys\n"
        "from sigma.sweep.engine import _worker_init\n"
        "_worker_init()\n"
        "import nbformat, papermill, jsonschema\n"
        "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
        "nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))\n"
        "from sigma.sweep import skip_iri_grammars\n"
        "print(repr(sys.modules['rfc3987_syntax']), skip_iri_grammars())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["None", "False"], out.stdout + out.stderr
