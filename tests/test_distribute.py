"""Accumulation over batches, tf.data datasets and the replicas of a tf.distribute.Strategy."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma.curvature.accumulate import Accumulator, as_dataset
from sigma.structures import Structure, fit_structure

ROOT = Path(__file__).resolve().parents[1]


def test_accumulator_traces_once_and_sums(rng):
    x = rng.normal(size=(23, 3))

    def body(batch, v):
        return tf.reduce_sum(batch[0], axis=0) * v, tf.cast(tf.shape(batch[0])[0], tf.float64)

    acc = Accumulator(body, as_dataset(x, batch_size=5), arg_specs=[tf.TensorSpec([], tf.float64)])
    for v in (1.0, 2.0):
        total, count = acc(v)
        np.testing.assert_allclose(total, v * x.sum(axis=0), rtol=1e-12)
        assert count == 23
    assert acc.tracing_count == 1  # 5 batches (the last one short) × 2 calls


@pytest.mark.parametrize(
    ("likelihood", "curvature"),
    [("regression", "ggn"), ("classification", "ggn")],  # the Hessian: in the subprocess test
)
def test_dataset_equals_arrays(rng, mlp64, likelihood, curvature):
    x = rng.normal(size=(21, 3))
    y = rng.normal(size=(21, 2)) if likelihood == "regression" else rng.integers(0, 2, 21)
    kw = dict(likelihood=likelihood, curvature=curvature, alpha=60.0)
    ref = sigma.Laplace(mlp64, x, y, **kw)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    la = sigma.Laplace(mlp64, ds, **kw)
    assert (la.n_data, la.n_outputs) == (21, 2)
    assert la.data_error == pytest.approx(ref.data_error, rel=1e-12)
    np.testing.assert_allclose(la.structure.matrix, ref.structure.matrix, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        la.predictive_covariance(x[:3]), ref.predictive_covariance(x[:3]), rtol=1e-9
    )
    if curvature == "ggn":  # (the exact Hessian here has negative eigenvalues)
        assert la.log_evidence() == pytest.approx(ref.log_evidence(), rel=1e-12)
    rebatched = sigma.Laplace(mlp64, ds, batch_size=10, **kw)
    np.testing.assert_allclose(
        rebatched.structure.matrix, ref.structure.matrix, rtol=1e-9, atol=1e-12
    )


def test_bad_datasets(rng, mlp64):
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(ValueError, match=r"^y must be None when x is a tf.data.Dataset"):
        sigma.Laplace(mlp64, ds, y)
    with pytest.raises(ValueError, match=r"must yield \(x, y\) batches"):
        sigma.Laplace(mlp64, tf.data.Dataset.from_tensor_slices(x).batch(4))
    with pytest.raises(ValueError, match="infinite"):
        sigma.Laplace(mlp64, ds.repeat())
    bad = x.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"^x \(dataset batch 1\) contains 1 NaN"):
        sigma.Laplace(mlp64, tf.data.Dataset.from_tensor_slices((bad, y)).batch(4))
    with pytest.raises(ValueError, match=r"y \(dataset batch 0\) has 3 columns"):
        sigma.Laplace(mlp64, tf.data.Dataset.from_tensor_slices((x, np.c_[y, y[:, :1]])).batch(4))


def test_array_only_structure_gets_arrays_and_refuses_a_strategy(rng, mlp64):
    seen = {}

    class ArraysOnly(Structure):
        name = "arrays_only"

        def fit(self, model, x, y, *, likelihood, curvature, batch_size):
            seen["x"], seen["y"] = x, y
            return self

    x, y = rng.normal(size=(9, 3)), rng.normal(size=(9, 2))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    kw = dict(likelihood=sigma.likelihoods.get("regression"), curvature="ggn", batch_size=None)
    fit_structure(ArraysOnly(), mlp64, ds, None, **kw)
    np.testing.assert_allclose(seen["x"], x)
    np.testing.assert_allclose(seen["y"], y)
    with pytest.raises(ValueError, match="'arrays_only' does not accumulate under a tf.distribute"):
        fit_structure(ArraysOnly(), mlp64, x, y, strategy=tf.distribute.get_strategy(), **kw)
    with pytest.raises(ValueError, match="strategy must be a tf.distribute.Strategy"):
        sigma.Laplace(mlp64, x, y, strategy="mirrored")


_MIRRORED = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]  # before TF initialises its devices
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    sys.path.insert(0, "tests")
    from conftest import make_mlp
    import sigma

    rng = np.random.default_rng(0)
    model = make_mlp(hidden=(5,))  # P = 32
    x, y = rng.normal(size=(41, 3)), rng.normal(size=(41, 2))  # 41: the last batch is short
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    for name, opts, curvature in [
        ("full", {}, "ggn"), ("full", {}, "hessian"), ("lowrank", {"rank": 4}, "ggn"),
        ("last_layer", {}, "ggn"),
    ]:
        kw = dict(structure=name, structure_options=opts, curvature=curvature, alpha=300.0,
                  batch_size=16)
        one = sigma.Laplace(model, x, y, **kw)
        two = sigma.Laplace(model, x, y, strategy=strategy, **kw)
        scale = np.abs(one.structure.eigenvalues).max()
        errors = [float(np.abs(two.structure.eigenvalues - one.structure.eigenvalues).max() / scale)]
        if curvature == "ggn" and name != "lowrank":  # (the slowest to trace or iterate)
            with strategy.scope():  # picked up without strategy=..., from a dataset
                scoped = sigma.Laplace(model, ds, **{**kw, "batch_size": None})
            errors.append(
                float(np.abs(scoped.structure.eigenvalues - one.structure.eigenvalues).max() / scale)
            )
            errors.append(float(np.abs(scoped.predict(x[:4])[1] / one.predict(x[:4])[1] - 1).max()))
        out[f"{name}-{curvature}"] = errors
    print("RESULT" + json.dumps(out))
    """
)


def test_mirrored_strategy_over_two_logical_cpus_equals_one_device():
    """Runs in a subprocess: logical devices must be configured before TF initialises them."""
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out.pop("replicas") == 2
    for key, errors in out.items():
        assert max(errors) < 1e-10, (key, errors)


def test_float32_model_under_default_strategy(rng):
    m32 = make_mlp(dtype="float32")
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    ref = sigma.Laplace(m32, x, y, structure="last_layer")
    la = sigma.Laplace(
        m32, x, y, structure="last_layer", strategy=tf.distribute.OneDeviceStrategy("/cpu:0")
    )
    np.testing.assert_allclose(la.structure.eigenvalues, ref.structure.eigenvalues, rtol=1e-6)
