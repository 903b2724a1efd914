"""Every ```python block of README.md runs as written.

The quick starts (regression and classifier) are self-contained and run alone; the later
blocks continue from names a reader has by then (a model, its training data, a fitted
Laplace), which :data:`REGRESSION_DATA` provides with small data, or the regression quick
start itself (run once per test process by the ``quick_start`` fixture). A block that needs other machines is
skipped with its reason. A README block this file does not know is a failure: add it here.
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

REGRESSION_DATA = """
import keras
import numpy as np
import sigma
rng = np.random.default_rng(0)
d = 1
x_train = rng.uniform(-3, 3, (60, d))
y_train = np.sin(x_train) + 0.1 * rng.normal(size=(60, d))
x_test = np.linspace(-5, 5, 21)[:, None]
x_cal = rng.uniform(-3, 3, (40, d))
y_cal = np.sin(x_cal) + 0.1 * rng.normal(size=(40, d))
model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(1)])
"""

# the README's blocks in order: (first words, what runs before it, skip reason or None)
KNOWN = [
    ("import sigma\nprint(sigma.__version__)", None, None),
    ("import keras\nimport numpy as np", None, None),
    ("import keras\nfrom sklearn.datasets import load_digits", None, None),
    ('model.compile(keras.optimizers.Adam(1e-3), "mse")', REGRESSION_DATA, None),
    ("model = keras.Sequential([keras.Input((d,))", REGRESSION_DATA, None),
    ("def mlp(width", REGRESSION_DATA, None),
    ('la.save("fit.npz")', "quick start", None),
    (
        "strategy = tf.distribute.MultiWorkerMirroredStrategy()",
        None,
        "MultiWorkerMirroredStrategy must be created when a program starts, before any other "
        "TensorFlow work, and is meant for several machines: tests/test_distribute.py runs "
        "two worker processes",
    ),
]
SLOW = {2, 3, 4, 5}  # training runs (digits + KFAC; the callbacks' refits; compare_models)
QUICK_START = 1  # the regression quick start: run once, shared with the blocks continuing from it


def test_every_readme_block_is_known():
    assert len(BLOCKS) == len(KNOWN), "a README python block was added or removed: list it"
    for block, (start, _, _) in zip(BLOCKS, KNOWN, strict=True):
        assert block.startswith(start), (block[:80], start)


def _run(code: str, namespace: dict) -> dict:
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    return namespace


def _seed():
    import keras

    keras.utils.set_random_seed(0)


def _run_block(index: int, namespace: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. a search at its bound
        return _run(BLOCKS[index], namespace)


@pytest.fixture(scope="module")
def quick_start() -> dict:
    """The names the regression quick start leaves a reader (its model trained, its fitted
    Laplace): the block runs once per test process, for its own test and for the blocks that
    continue from it (each gets a copy of the namespace; none changes the model's weights)."""
    _seed()
    return _run_block(QUICK_START, {})


@pytest.mark.parametrize(
    "index",
    [pytest.param(i, marks=pytest.mark.slow) if i in SLOW else i for i in range(len(KNOWN))],
)
def test_readme_block_runs(index, tmp_path, monkeypatch, request):
    _, before, skip = KNOWN[index]
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    if index == QUICK_START:
        out = request.getfixturevalue("quick_start")
    else:
        namespace: dict = {}
        if before == "quick start":
            namespace = dict(request.getfixturevalue("quick_start"))
        _seed()
        if before and before != "quick start":
            _run(before, namespace)
        out = _run_block(index, namespace)
    if index == QUICK_START:  # the regression quick start: mean, std of the test inputs
        assert out["mean"].shape == out["std"].shape == (101, 1)
        assert np.all(out["std"] > 0)
    if index == 2:  # the classifier quick start: probabilities, a temperature from the search
        probs = out["probs"]
        assert probs.shape == (len(out["x_test"]), 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
        assert out["la"].prior_result["temperature"] == out["la"].temperature
    if KNOWN[index][0].startswith("la.save"):
        assert (tmp_path / "fit.npz").exists() and (tmp_path / "sigma_savedmodel").is_dir()
