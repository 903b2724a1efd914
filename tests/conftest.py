"""Shared tiny, seeded models. Float64 models are built with an explicit layer dtype
(Keras 3 caches its dtype policy, so keras.config.set_floatx alone would not do it)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One process per core already (pytest-xdist): each op on one thread, no oversubscription
    # of the cores by TensorFlow's and BLAS's pools (inherited by subprocesses and kernels).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Hypothesis profiles (registered here so that --hypothesis-profile=NAME can select them):
# "ci", the default, is derandomized so `make test` is deterministic; "fuzz" (SIGMA_FUZZ=1 or
# --hypothesis-profile=fuzz, `make fuzz`) draws SIGMA_FUZZ_SCALE (default 50) times as many
# examples in tests/test_fuzz.py, from a fresh seed each run.
_HYPOTHESIS = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile("ci", derandomize=True, **_HYPOTHESIS)
settings.register_profile("fuzz", derandomize=False, print_blob=True, **_HYPOTHESIS)
settings.load_profile("fuzz" if os.environ.get("SIGMA_FUZZ") else "ci")


def make_mlp(n_in=3, hidden=(5, 4), n_out=2, dtype="float64", seed=0, activation="tanh"):
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((n_in,), dtype=dtype)]
    layers += [keras.layers.Dense(h, activation=activation, dtype=dtype) for h in hidden]
    layers += [keras.layers.Dense(n_out, dtype=dtype)]
    return keras.Sequential(layers)


def make_linear(n_in=3, n_out=2, dtype="float64", seed=0, use_bias=True):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((n_in,), dtype=dtype),
            keras.layers.Dense(n_out, use_bias=use_bias, dtype=dtype),
        ]
    )


def terminal_sigint() -> None:
    """``preexec_fn`` of a subprocess that a test interrupts with SIGINT: Ctrl-C as a terminal
    program gets it — default disposition, not blocked — whatever this pytest process has
    (a worker process may hold SIGINT ignored or blocked, and a child inherits both, after
    which the test's Ctrl-C never arrives)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def _shared_mlp64():
    model = make_mlp()
    return model, model.get_weights()


@pytest.fixture
def mlp64(_shared_mlp64):
    """``make_mlp()``, one model per test process: each test gets it back with its initial
    weights, every layer trainable and the seed set as ``make_mlp`` leaves it. The curvature
    engine is traced once per model, so the tests that share it do not trace it again."""
    import keras

    model, weights = _shared_mlp64
    for layer in model.layers:
        layer.trainable = True
    model.set_weights(weights)
    keras.utils.set_random_seed(0)
    return model


@pytest.fixture
def data(rng):
    x = rng.normal(size=(12, 3))
    y = rng.normal(size=(12, 2))
    return x, y


# The modules of `make test-fast`, the edit loop (≤ 60 s on 2 cores): the core math against its
# references, the public API and its errors. Their tests get the marker `core`; a test marked
# `slow` (subprocesses, training runs, fuzzing) stays out all the same. Everything else — every
# model shape, layer path and structure matrix, serving, sweeps, notebooks — runs in `make test`.
CORE_MODULES = {
    "test_binary",
    "test_conformal",
    "test_classification",
    "test_curvature",
    "test_diag",
    "test_errors",
    "test_evidence",
    "test_install",
    "test_kfac",
    "test_laplace",
    "test_memory",
    "test_metrics",
    "test_predictive_methods",
    "test_priors",
    "test_saving",
    "test_selection",
}


def _core_only(config) -> bool:
    """Whether the run selects core tests alone (``-m core`` or ``-m "core and ..."``, as
    `make test-fast` does)."""
    expr = (getattr(config.option, "markexpr", "") or "").strip()
    return (expr == "core" or expr.startswith("core and ")) and " or " not in expr


def pytest_ignore_collect(collection_path, config):
    """With core tests alone selected, the other test modules are not imported at all (in each
    pytest-xdist process: their imports — KerasHub, papermill, the zoo — cost seconds)."""
    name = collection_path.name
    if name.startswith("test_") and name.endswith(".py") and _core_only(config):
        return True if collection_path.stem not in CORE_MODULES else None
    return None


def pytest_collection_modifyitems(config, items):
    """Mark the core modules' tests `core`; run the long tiers first (notebooks, then slow
    tests), the quick unit tests last: spread over processes (pytest-xdist), the short tests
    then fill the gaps instead of one process finishing a notebook alone at the end."""
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in CORE_MODULES:
            item.add_marker(pytest.mark.core)

    def tier(item):
        return (
            0
            if item.get_closest_marker("notebook")
            else 1
            if item.get_closest_marker("slow")
            else 2
        )

    items.sort(key=tier)  # stable: file order within a tier
