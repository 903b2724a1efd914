"""The package's layering: an import graph without cycles, the core below the notebook helpers
and the sweep machinery, and graphs traced once per model however many Laplace objects use it."""

import ast
import json
import logging
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma.curvature import Engine, engine

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sigma"


def _modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages([str(PACKAGE)], prefix="sigma.")
        if "__main__" not in m.name
    )


def _imports(module: str) -> set[str]:
    """The sigma modules ``module`` imports at import time (module level, not in functions)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:  # module level only: lazy imports inside functions are not edges
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sigma")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                )
            if base.startswith("sigma"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    known = set(_modules()) | {"sigma"}
    # A package is always imported before its submodules: an edge to an ancestor is no cycle.
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {m for m in found if m in known and m != module and m not in ancestors}


def _graph() -> dict[str, set[str]]:
    return {m: _imports(m) for m in _modules()}


# Modules every layer may import: pure Python and NumPy, nothing of sigma, no TensorFlow.
SHARED = {"sigma.jsonable"}


def _layer(module: str) -> str:
    if module in SHARED:
        return "shared"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("lab", "sweep") else "core"


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, path):
        if state.get(node) == 1:
            cycle = path[path.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        state[node] = 2

    for module in graph:
        visit(module, [])


def test_layers_point_one_way():
    """core ← lab; the sweep machinery imports neither (and the core neither of them)."""
    allowed = {
        "shared": set(),
        "core": {"core", "shared"},
        "lab": {"core", "lab", "shared"},
        "sweep": {"sweep", "shared"},
    }
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        for d in deps
        if d != "sigma" and _layer(d) not in allowed[_layer(m)]
    ]
    assert not bad, bad


def _import_in_a_fresh_interpreter(code: str, modules: list[str]) -> str:
    """Run ``code`` in a new Python, then import ``modules`` in their order; its stdout."""
    code += "\nimport importlib\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter_in_random_order():
    modules = _modules()
    np.random.default_rng(0).shuffle(modules)
    _import_in_a_fresh_interpreter("import sys", modules)


@pytest.mark.slow
def test_import_sigma_does_not_import_the_sweep_machinery():
    """... and then every module imports, in another random order (one interpreter, for the
    cost of starting TensorFlow)."""
    modules = _modules()
    np.random.default_rng(1).shuffle(modules)
    code = (
        "import json, sys, sigma\nsigma.Laplace\nimport sigma.lab\nsigma.lab.mlp\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sigma.sweep'))))"
    )
    stdout = _import_in_a_fresh_interpreter(code, modules)
    assert json.loads(stdout.strip().splitlines()[-1]) == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_reads(extra: dict | None = None) -> list[str]:
    """Every place a sigma module reads another sigma module's private name: ``from sigma.x
    import _name``, ``module._name`` on an imported sigma module, and ``obj._name`` where
    ``_name`` is a private attribute or method that only other modules' classes define (e.g.
    ``laplace._beta`` outside sigma.laplace). Private *modules* (``sigma._checks``) are fine
    to import from; their private names are not. ``extra``: {module name: source} to scan
    as if it were part of the package."""
    modules = _modules()
    known = set(modules) | {"sigma"}

    def path(module):
        p = PACKAGE.joinpath(*module.split(".")[1:])
        return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")

    trees = {m: ast.parse(path(m).read_text()) for m in modules}
    trees.update({m: ast.parse(src) for m, src in (extra or {}).items()})
    defined = {}
    for m, tree in trees.items():
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names |= {item.name} if _private(item.name) else set()
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
        defined[m] = {n for n in names if _private(n)}
    bad = []
    for m, tree in trees.items():
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name in known})
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sigma"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    elif _private(a.name):
                        bad.append(f"{m}:{node.lineno}: from {node.module} import {a.name}")
        others = set().union(*(d for o, d in defined.items() if o != m))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            value = node.value
            if isinstance(value, ast.Name) and aliases.get(value.id, m) != m:
                bad.append(f"{m}:{node.lineno}: {value.id}.{node.attr}")
            elif (
                not (isinstance(value, ast.Name) and value.id in ("self", "cls"))
                and node.attr in others
                and node.attr not in defined[m]
            ):
                bad.append(f"{m}:{node.lineno}: {ast.unparse(value)}.{node.attr}")
    return bad


def test_no_module_reads_another_modules_private_names():
    assert not _private_reads(), _private_reads()


def test_the_private_name_check_can_fail():
    """The scan finds each kind of read it forbids in a module written for the purpose."""
    source = (
        "from sigma.curvature.engine import _shape_key\n"
        "from sigma import laplace\n"
        "def f(la):\n"
        "    return laplace._frozen_state, la._calls\n"
    )
    found = _private_reads({"sigma._scan_probe": source})
    probe = [f for f in found if f.startswith("sigma._scan_probe")]
    assert len(probe) == 3, probe


def _tracing_counts(model) -> dict:
    """How many times each traced function in the model's engine has been traced."""
    counts = {}
    engines = [((), engine(model))]
    while engines:
        prefix, eng = engines.pop()
        for key, fn in eng.store.items():
            if isinstance(fn, Engine):  # the engine of a selection of the weights
                engines.append(((*prefix, key), fn))
                continue
            get = getattr(fn, "experimental_get_tracing_count", None)
            if get is not None:
                counts[(*prefix, key)] = get()
    return counts


@pytest.mark.parametrize("structure", [*sigma.structures.names(), "last_layer"])
def test_a_beta_scan_of_ten_laplace_objects_traces_once(rng, structure):
    model = make_mlp(hidden=(8, 6))  # P = 100
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    kw = dict(structure=structure, alpha=1.0)
    if structure == "lowrank":
        kw["structure_options"] = {"rank": 5}
    sigma.Laplace(model, x, y, **kw).predict(x[:7])  # the first: every graph traced here
    before = _tracing_counts(model)
    assert before and all(n == 1 for n in before.values()), before
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        for beta in np.geomspace(0.1, 10.0, 10):
            la = sigma.Laplace(model, x, y, beta=float(beta), **kw)
            la.predict(x[:7])
            la.predict(x[:3])  # another batch size: the same graph
            la.log_evidence()
    finally:
        tf.get_logger().removeHandler(handler)
    assert _tracing_counts(model) == before
    assert not [m for m in messages if "retracing" in m]


def test_every_graph_needing_the_jacobian_shares_one_trace_of_it(rng):
    """The vectorised per-sample Jacobian is the costliest piece to trace: the full and low-rank
    fits, their predictive variances and the output Jacobian all call one traced function."""
    model = make_mlp(hidden=(8, 6))
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    calls = []
    eng = engine(model)
    inner = eng._jacobian
    object.__setattr__(eng, "_jacobian", lambda w, xb: calls.append(1) or inner(w, xb))
    sigma.Laplace(model, x, y, structure="full").predict(x[:7])
    sigma.Laplace(model, x, y, structure="lowrank", structure_options={"rank": 5}).predict(x[:4])
    sigma.output_jacobian(model, x[:5])
    counts = {k: n for k, n in _tracing_counts(model).items() if k[-1][0] == "jacobian-fn"}
    assert list(counts.values()) == [1], counts
    assert len(calls) == 1  # the Python body ran once: in the one trace
    # under a strategy each replica's graph traces it inline (not the shared function)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        la = sigma.Laplace(model, x, y, structure="full", strategy=tf.distribute.get_strategy())
    np.testing.assert_allclose(la.predict(x[:7])[1], sigma.Laplace(model, x, y).predict(x[:7])[1])
    assert len(calls) > 1


def test_graphs_follow_the_weights_without_tracing_again(rng, mlp64):
    """The graphs read the variables when they run: after more training a new Laplace sees the
    new weights (the same σ as a fresh model with those weights) and nothing is traced."""
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    sigma.Laplace(mlp64, x, y).predict(x)
    before = _tracing_counts(mlp64)
    w = sigma.flat_weights(mlp64) * 1.5
    sigma.set_flat_weights(mlp64, w)
    moved = sigma.Laplace(mlp64, x, y).predict(x)[1]
    assert _tracing_counts(mlp64) == before
    fresh = make_mlp(hidden=(5, 4))
    sigma.set_flat_weights(fresh, w)
    np.testing.assert_allclose(moved, sigma.Laplace(fresh, x, y).predict(x)[1], rtol=1e-12)


def test_a_changed_set_of_variables_gets_a_new_engine(rng, mlp64):
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    first = engine(mlp64)
    assert engine(mlp64) is first
    mlp64.layers[0].trainable = False
    second = engine(mlp64)
    assert second is not first and second.n_params == sigma.num_params(mlp64) == 54 - 20
    assert sigma.Laplace(mlp64, x, y).n_params == 34


KERAS_PRIVATE = re.compile(
    r"\b_(inbound_nodes|outbound_nodes|keras_history|flatten_layers|call_has_training_arg|"
    r"fn_kwargs|tracker|functional|layers_by_name|build_shapes_dict)\b"
    r"|\b(_getframe|currentframe|f_locals|f_back)\b"
)


def test_keras_internals_and_frames_are_read_in_keras_compat_only():
    """issue 27: Keras' private names (nodes, histories, flattened layers, a call's training
    argument) and a caller's frame are read behind named functions of sigma/keras_compat.py,
    so that a Keras release can break one module, not seven."""
    package = Path(__file__).resolve().parents[1] / "sigma"
    found = [
        f"{path.relative_to(package.parent)}:{i}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "keras_compat.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if KERAS_PRIVATE.search(line)
    ]
    assert not found, "\n".join(found)
