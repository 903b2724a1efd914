"""Accumulation over batches, tf.data datasets and the replicas of a tf.distribute.Strategy."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma.curvature.accumulate import Accumulator, as_dataset
from sigma.structures import Structure, fit_structure

pytestmark = pytest.mark.slow  # worker processes / notebook kernels

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


def test_a_structure_is_given_the_dataset_and_the_strategy_as_passed(rng, mlp64):
    """One fit signature for every structure: the prepared dataset batch by batch (never
    concatenated into arrays), the strategy and the progress setting as given, on a fresh copy."""
    seen = {}

    class Recorder(Structure):
        name = "recorder"

        def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None,
                progress=None):  # fmt: skip
            seen.update(x=x, y=y, strategy=strategy, progress=progress, self=self)
            return self

    try:
        x, y = rng.normal(size=(9, 3)), rng.normal(size=(9, 2))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        kw = dict(likelihood=sigma.likelihoods.get("regression"), curvature="ggn", batch_size=None)
        given = Recorder()
        strategy = tf.distribute.get_strategy()
        fitted = fit_structure(given, mlp64, ds, None, strategy=strategy, progress=False, **kw)
        assert seen["x"] is ds and seen["y"] is None and seen["strategy"] is strategy
        assert seen["progress"] is False and fitted is seen["self"] and fitted is not given
        with pytest.raises(ValueError, match="strategy must be a tf.distribute.Strategy"):
            sigma.Laplace(mlp64, x, y, strategy="mirrored")
    finally:
        Structure.registry.pop("recorder", None)


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
    x, y = rng.normal(size=(41, 3)), rng.normal(size=(41, 2))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    # Global batches of 20 from arrays and of 10 from the dataset: the last, of one sample, leaves
    # the second replica an empty batch on both paths.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    # Every structure from arrays with strategy=...; from a dataset with the strategy picked up
    # from its scope, one structure per accumulation (the dense GGN, the layer-wise statistics):
    # that path differs from the arrays' in how the data reach the same bodies, not in them.
    for name, opts, curvature, scoped in [
        ("full", {}, "ggn", True), ("full", {}, "hessian", False),
        ("lowrank", {"rank": 4}, "ggn", False),  # (its residual diagonal: diag's statistics)
        ("last_layer", {}, "ggn", False),
        # the layer-wise capture: two replicas trace the patched forward pass in threads
        # (sigma.curvature.capture serialises it)
        ("diag", {}, "ggn", False), ("kfac", {}, "ggn", True),
    ]:
        kw = dict(structure=name, structure_options=opts, curvature=curvature, alpha=300.0,
                  batch_size=20)
        one = sigma.Laplace(model, x, y, **kw)
        scale = np.abs(one.structure.eigenvalues).max()
        fits = [sigma.Laplace(model, x, y, strategy=strategy, **kw)]
        if scoped:
            with strategy.scope():  # picked up without strategy=..., from a dataset
                fits.append(sigma.Laplace(model, ds, **{**kw, "batch_size": None}))
        errors = []
        for la in fits:
            errors.append(
                float(np.abs(la.structure.eigenvalues - one.structure.eigenvalues).max() / scale)
            )
            if curvature == "ggn" and name != "lowrank":  # (the slowest to trace or iterate)
                errors.append(float(np.abs(la.predict(x[:4])[1] / one.predict(x[:4])[1] - 1).max()))
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


# -- several workers ------------------------------------------------------------------------------
# What each of the two worker processes runs (the same script on both, as TensorFlow asks: every
# worker takes part in every collective). TF_CONFIG names the cluster and this task; argv: the
# .npz holding the data, the cases and the Laplace keywords (JSON), the output folder.
_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.monotonic()
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)  # two workers share the CPU
    # First of all: the strategy starts this task's server and configures the collectives
    # before TensorFlow initialises its runtime (it reads the cluster from TF_CONFIG).
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import numpy as np
    sys.path.insert(0, "tests")
    from conftest import make_mlp
    import sigma
    from sigma.curvature.accumulate import Accumulator, ArrayBatches

    data_path, spec, out_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    task = strategy.cluster_resolver.task_id  # (from TF_CONFIG) 0 is the chief
    with np.load(data_path) as f:
        x, y, x_test = f["x"], f["y"], f["x_test"]
    n = len(x)
    out = {"replicas": strategy.num_replicas_in_sync, "task": task}
    print(f"set up in {time.monotonic() - start:.1f} s", flush=True)  # (the log: where time goes)

    # Which samples does this worker see? Accumulate a histogram of sample indices exactly as
    # sigma accumulates a curvature (arrays -> ArrayBatches -> a dataset distributed by the
    # strategy), and list the indices in this worker's own share of the batches.
    counter = Accumulator(
        lambda batch: tf.reduce_sum(tf.one_hot(batch[0], n, dtype=tf.float64), 0),
        ArrayBatches((np.arange(n),), 16),
        strategy=strategy,
    )
    out["seen"] = [
        int(i)
        for batch in counter._batches  # the distributed dataset the accumulator iterates
        for part in strategy.experimental_local_results(batch[0])
        for i in part.numpy()
    ]
    out["counts"] = counter().tolist()  # reduced over both workers

    # P = 32, seeded: the same weights on every worker; built in the strategy's scope, as a Keras
    # user who trains under the strategy has it (mirrored variables; the test above: outside)
    with strategy.scope():
        model = make_mlp(hidden=(5,))
    out["weights"] = np.concatenate([w.ravel() for w in model.get_weights()]).tolist()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    for name, opts, curvature, source in spec["cases"]:
        start = time.monotonic()
        kw = dict(structure=name, structure_options=opts, curvature=curvature, **spec["laplace"])
        if source == "arrays":
            la = sigma.Laplace(model, x, y, strategy=strategy, **kw)
        else:  # a dataset (its own batches of 10), the strategy picked up from its scope
            with strategy.scope():
                la = sigma.Laplace(model, ds, **{**kw, "batch_size": None})
        out["/".join((name, curvature, source))] = {
            "n_data": la.n_data,
            "structure_n_data": getattr(la.structure, "n_data", None),
            "eigenvalues": np.ravel(la.structure.eigenvalues).tolist(),
            "sigma": la.predict(x_test)[1].tolist(),
            "log_evidence": la.log_evidence(),
        }
        print(f"{name}/{curvature}/{source} in {time.monotonic() - start:.1f} s", flush=True)
    # Every worker holds the same reduced sums; a real job lets the chief (task 0) write.
    # Both write here, so that the test can check that worker 1 agrees too.
    with open(os.path.join(out_dir, f"worker{task}.json"), "w") as f:
        json.dump(out, f)
    """
)

# One case per accumulation the workers reduce — the dense GGN; the layer-wise statistics, diag's
# (lowrank's residual diagonal) and kfac's; the Lanczos products, a collective per pass — and both
# sources of data (every structure on one process's replicas: the test above).
_CASES = [
    ("full", {}, "ggn", "arrays"),
    ("lowrank", {"rank": 4, "diag": True}, "ggn", "arrays"),
    ("kfac", {}, "ggn", "dataset"),
]
# alpha = 1: the prior does not swamp the curvature in σ and the evidence
_LAPLACE = {"alpha": 1.0, "batch_size": 16}


def _loopback_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1: bound together (port 0: the kernel picks a free
    one), then released for the workers' servers to bind."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def _two_workers(tmp_path, args):
    """Start the two workers, each with its TF_CONFIG (a cluster of two tasks on loopback
    ports); yields ``wait(timeout)`` -> (return codes, timed out). Whatever happens, both
    processes are gone on exit (killed if still running)."""
    ports = _loopback_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []

    def wait(timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            # both done, or one failed (the other would wait for it in a collective)
            if None not in codes or any(c not in (None, 0) for c in codes):
                return codes, False
            time.sleep(0.2)
        return [p.poll() for p in procs], True

    try:
        for task in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": task}}
            with open(tmp_path / f"worker{task}.log", "w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _WORKER, *args],
                        cwd=ROOT,
                        env=dict(os.environ, TF_CONFIG=json.dumps(config)),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield wait
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_multi_worker_mirrored_strategy_over_two_processes_equals_one_process(tmp_path, rng):
    """Two worker processes on 127.0.0.1 accumulate the curvature under a
    MultiWorkerMirroredStrategy (one replica each); each kind of accumulation, from arrays and
    from a dataset, equals the single-process result here (eigenvalues of the curvature, σ at
    test inputs, the log evidence) to 1e-10, on both workers.

    Data: sigma turns arrays into a batched ``from_tensor_slices`` dataset
    (``ArrayBatches.as_dataset``), which the strategy auto-shards with the default
    AutoShardPolicy.AUTO. There are no files to shard, so AUTO falls back to DATA: each worker
    builds the whole pipeline, every global batch of 16 is split into one piece per replica
    (8 + 8; the last batch of 9 into 5 + 4) and each worker keeps its own piece. So each sample
    is counted exactly once, and not by luck of the reduction: the workers' own shares (``seen``)
    are checked to partition the samples, and the reduced histogram (``counts``) to be one per
    sample. A user's dataset (``from_tensor_slices(...).batch(10)``) is sharded the same way
    (its curvature would be doubled if every worker counted every sample).
    """
    try:
        _loopback_ports(2)
    except OSError as e:
        pytest.skip(f"cannot bind TCP ports on the loopback interface 127.0.0.1 ({e})")
    x, y, x_test = rng.normal(size=(41, 3)), rng.normal(size=(41, 2)), rng.normal(size=(5, 3))
    np.savez(tmp_path / "data.npz", x=x, y=y, x_test=x_test)
    spec = json.dumps({"cases": _CASES, "laplace": _LAPLACE})
    args = [str(tmp_path / "data.npz"), spec, str(tmp_path)]
    model = make_mlp(hidden=(5,))
    ref = {}
    for _attempt in range(3):  # new ports if another process took one of them meanwhile
        with _two_workers(tmp_path, args) as wait:
            # the single-process reference, computed while the workers start
            for name, opts, curvature, _ in _CASES:
                if (name, curvature) not in ref:
                    kw = dict(structure_options=opts, curvature=curvature, **_LAPLACE)
                    la = sigma.Laplace(model, x, y, structure=name, **kw)
                    ref[name, curvature] = (
                        np.ravel(la.structure.eigenvalues),
                        la.predict(x_test)[1],
                        la.log_evidence(),
                    )
            codes, timed_out = wait(300.0)
        logs = [(tmp_path / f"worker{t}.log").read_text() for t in range(2)]
        # (a port taken between its release and the worker's bind: "Could not start gRPC server")
        if codes == [0, 0] or not any("could not start grpc server" in g.lower() for g in logs):
            break
    detail = "\n".join(
        f"--- worker {t} ({'still running, stopped' if c is None else f'exit {c}'}):\n{g[-3000:]}"
        for t, (c, g) in enumerate(zip(codes, logs, strict=True))
    )
    assert not timed_out, f"the workers did not finish within 300 s\n{detail}"
    assert codes == [0, 0], detail

    outs = [json.loads((tmp_path / f"worker{t}.json").read_text()) for t in range(2)]
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    # each worker's own share of the batches: together every sample exactly once
    assert sorted(outs[0]["seen"] + outs[1]["seen"]) == list(range(41))
    assert outs[0]["seen"] and outs[1]["seen"]  # both workers did part of the work
    errors = {}
    for out in outs:
        assert out["replicas"] == 2
        assert out["counts"] == [1.0] * 41  # the histogram reduced over both workers
        np.testing.assert_array_equal(out["weights"], weights)  # the same model everywhere
        for name, _, curvature, source in _CASES:
            got = out[f"{name}/{curvature}/{source}"]
            eig, std, log_ev = ref[name, curvature]
            assert got["n_data"] == 41
            assert got["structure_n_data"] in (None, 41)  # kfac: the reduced sample count
            key = (out["task"], name, curvature, source)
            errors[key] = [
                float(np.abs(np.asarray(got["eigenvalues"]) - eig).max() / np.abs(eig).max()),
                float(np.abs(np.asarray(got["sigma"]) / std - 1).max()),
                abs(got["log_evidence"] / log_ev - 1),
            ]
    worst = max(max(e) for e in errors.values())
    assert worst < 1e-10, errors
