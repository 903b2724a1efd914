"""sigma against laplace-torch on the same data, the same network and the same weights.

    make bench-peer                       # builds .venv-peer (torch CPU + laplace-torch), then runs
    .venv/bin/python bench/peer.py --peer-python .venv-peer/bin/python [--n 10000] [--test 1000]
        [--repeats 5] [--mlp-repeats 2] [--pred-batch 50] [--backend backpack|curvlinops]
        [--tasks iris,mlp-diag,mlp-kfac,cnn-diag,cnn-kfac,cnn-last,tf-diag,tf-kfac,tf-last]
        [--cnn-n 10000] [--cnn-test 1000] [--cnn-repeats 1] [--tf-n 10000] [--tf-test 1000]
        [--tf-epochs 3] [--tf-repeats 1] [--mem-cap 12] [--time-cap SECONDS]

What it measures, in one run, printed as one table:

* Iris (scikit-learn's copy, no download; 100 training points, 50 test points), a 4-16-16-3
  tanh MLP trained as a regression on one-hot targets: the full GGN fit (cold: the first in the
  process; warm: a further Laplace object on the same model), the GLM predictive σ for the 50
  test points (noise 1/β included), α by the evidence with β fixed (sigma: MacKay's fixed point,
  ``optimize_evidence(fix_beta=True)``; laplace-torch: ``optimize_prior_precision(method=
  "marglik", prior_structure="scalar")``, its default 100 Adam steps) and α, β together (sigma:
  ``optimize_evidence()``; laplace-torch: 100 Adam steps on ``log_marginal_likelihood(prior,
  sigma_noise)`` as in its README).
* A 784-256-256-10 ReLU MLP on N = 10,000 synthetic regression samples
  (``sigma.data.teacher_regression``) trained for two epochs: the diagonal and the Kronecker
  (sigma "kfac", laplace-torch "kron") fits, cold and warm, and the predictive σ for 1,000 test
  points with each (laplace-torch in batches of --pred-batch).

* The CNN of bench/cnn.py (28×28×1 → Conv2D 32 → Conv2D 64 → MaxPool → Dense 128 → Dense 10,
  1.2M weights; digits images made from scikit-learn's, --cnn-n training and --cnn-test test
  images, --cnn-epochs of training), classification with α = --alpha: sigma's kfac against
  laplace-torch's kron, diag against diag (both the exact diagonal GGN), and kfac against kron
  on the last layer's weights; the fit and the probit predict_proba of the test images (cold,
  then --cnn-repeats warm runs; 0: the cold run only). laplace-torch sees the same weights in
  torch's layout (NCHW, the first Dense layer's inputs reordered to torch's flattening).
* The small transformer classifier of bench/cnn.py (``--model transformer`` there: 32 token
  ids from a vocabulary of 2,000 → Embedding 64 → MultiHeadAttention, 4 heads of 16, with a
  residual → LayerNormalization → mean over positions → Dense 10 logits; 145,418 weights;
  --tf-n training and --tf-test test sequences, --tf-epochs of training): the same three pairs
  (tasks tf-diag, tf-kfac, tf-last). laplace-torch sees the same weights in an equivalent torch
  module (bench/peer_torch.py): nn.Embedding, the query, key, value and output projections as
  nn.Linear (Keras' (64, 4, 16) kernels flattened head-major and transposed), the query scaled
  by 1/√16 as Keras does, nn.LayerNorm(64, eps=1e-3), the mean, nn.Linear(64, 10); the worker
  checks its logits against the Keras logits of the test data (computed in the parent) and
  records the largest difference. Where laplace-torch's backend refuses the module, the
  exception is recorded as the user meets it ("failed: ...") and the other backend (BackPACK /
  curvlinops) is tried in a fresh process; the table says which ran.

Every worker runs under a memory cap (--mem-cap GB, default 12): its resident memory is read
every 50 ms and a worker above the cap is killed and reported as "killed" with the size it had
reached, so that a peer that runs out of memory (laplace-torch's kron on the CNN) cannot take
the machine down; with --time-cap a worker still running after that many seconds is killed and
reported as "stopped" (none is by default).

The transformer, measured (one run on the shared 2-core machine, 180 s wall including the data
and 3 epochs of training; ``.venv/bin/python bench/peer.py --peer-python .venv-peer/bin/python
--tasks tf-diag,tf-kfac,tf-last``, N = 10,000, 1,000 test sequences; cold, then one warm run):

    step                                  sigma cold / warm      laplace-torch cold / warm
    kfac/kron fit, all weights            15.3 s / 12.0 s        failed (both backends)
    kfac/kron predict_proba               3.79 s / 1.76 s        —
    diag fit, all weights                 30.5 s / 21.2 s        failed (BackPACK), killed at
    diag predict_proba                    3.48 s / 1.64 s          the 12 GB cap after 12 s
                                                                   (curvlinops)
    last-layer kfac/kron fit              4.51 s / 3.02 s        1.19 s / 1.10 s (BackPACK)
    last-layer predict_proba              0.353 s / 0.167 s      0.094 s / 0.116 s

What a laplace-torch user meets on this module: BackPACK refuses the whole network ("Extension
saving to diag_ggn_exact [kflr] does not have an extension for Module <...Transformer>": the
attention's matmul and softmax are no modules), curvlinops' KFAC refuses it ("Found parameters
in un-supported layers.": Embedding and LayerNorm), and its diagonal GGN (laplace-torch's
torch.func.jacrev of the whole batch's B·K outputs) grew past 12 GB in the first batch. The last
layer runs on both; there its kron and sigma's kfac differ in definition (laplace-torch keeps
the bias as a block of its own): logit variances within 4.7e-2, probit probabilities within
4.6e-3. The torch module's logits equal the Keras logits to 2.9e-6 (largest |logit| 9.5). A
child module named ``output`` breaks BackPACK (it stores ``module.output`` on every module):
the torch module calls it ``out_proj``.

laplace-torch's backends: on Iris its default, CurvlinopsGGN (the full GGN from a curvlinops
linear operator); on the MLP BackPackGGN by default (--backend): the exact diagonal GGN
(DiagGGNExact) and the exact-GGN Kronecker factors (KFLR), where the default CurvlinopsGGN forms
the exact diagonal from every sample's full Jacobian and is far slower at this size
(--backend curvlinops runs it: the KFAC of curvlinops, type-2, and that diagonal).

The parent process (this script, in the project's environment) makes the data and trains each
Keras model once, then writes the data and the weights to an npz file; every measurement runs in
a subprocess of its own: sigma's with this interpreter (importing the sigma of this checkout),
laplace-torch's with --peer-python (``bench/peer_torch.py``), which loads the same weights into
an equivalent ``torch.nn.Sequential`` (kernels transposed). Times are wall-clock seconds, warm
figures the median of the warm runs; Δpeak is the largest resident memory above the level before
the step, sampled every 5 ms by a thread (both the cold and the warm runs of the step); the
process peak is its high-water mark (VmHWM).

Correctness, in the same run: with the same α (prior_precision) and β (sigma_noise = 1/√β) the
two predictive variances gᵀA⁻¹g (noise excluded: the stringent comparison) and σ (noise included)
must agree: the largest relative difference is printed for the full GGN on Iris in float32 (as
timed) and again in float64, for the diagonal GGN on the MLP, and, for information only, for the
Kronecker factorisations, whose definitions differ between the libraries. Also printed: the log
evidence of each at the same α, β on Iris, and the α (and β) at which each library puts the
evidence optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from memory_probe import PeakRSS, peak_bytes, resident_bytes

ROOT = Path(__file__).resolve().parents[1]
IRIS = (4, 16, 16, 3)  # tanh hidden layers
MLP = (784, 256, 256, 10)  # relu hidden layers
ACTIVATION = {"iris": "tanh", "mlp": "relu"}
CNN_TASKS = ("cnn-diag", "cnn-kfac", "cnn-last")  # sigma kfac = laplace-torch kron
TF_TASKS = ("tf-diag", "tf-kfac", "tf-last")  # the transformer of bench/cnn.py, the same three
TASKS = ("iris", "mlp-diag", "mlp-kfac", *CNN_TASKS, *TF_TASKS)
BACKENDS = ("backpack", "curvlinops")


# -- helpers shared with bench/peer_torch.py (standard library and numpy only) ---------------------


def measure(fn, repeats: int, cold: bool = True) -> tuple[dict, object]:
    """Run ``fn`` once cold (if ``cold``) then ``repeats`` times warm; returns ({cold, warm
    (median), warm_all, mem}, the last result). mem: Δpeak over all the runs."""
    row, out, mem = {}, None, 0
    if cold:
        with PeakRSS() as m:
            t0 = time.perf_counter()
            out = fn()
            row["cold"] = time.perf_counter() - t0
        mem = m.bytes
    times = []
    with PeakRSS() as m:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    warm = statistics.median(times) if times else row.get("cold")  # repeats=0: the cold run
    row.update(warm=warm, warm_all=times, mem=max(mem, m.bytes))
    return row, out


def load_data(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def layer_weights(data: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(kernel (in, out), bias (out,)), ...] in Keras layout."""
    n = sum(1 for k in data if k.startswith("kernel"))
    return [(data[f"kernel{i}"], data[f"bias{i}"]) for i in range(n)]


def worker_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data", required=True, help="npz written by the parent")
    p.add_argument("--out", required=True, help="npz to write the predictive σ to")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pred-batch", type=int, default=50)
    p.add_argument("--backend", default="backpack")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def cnn_torch_weights(data: dict) -> list[np.ndarray]:
    """The CNN's Keras weights (w0..w7: conv kernels (kh, kw, in, out), Dense kernels
    (in, out), biases) in torch's layout: conv (out, in, kh, kw), Linear (out, in), the first
    Linear's inputs reordered from Keras' flattening (H, W, C) to torch's (C, H, W)."""
    w = [data[f"w{i}"] for i in range(8)]
    d = w[4]  # (H·W·C, units)
    c = w[2].shape[-1]
    side = int(round(np.sqrt(d.shape[0] // c)))
    d = d.reshape(side, side, c, -1).transpose(2, 0, 1, 3).reshape(d.shape[0], -1)
    return [
        w[0].transpose(3, 2, 0, 1), w[1], w[2].transpose(3, 2, 0, 1), w[3],
        d.T, w[5], w[6].T, w[7],
    ]  # fmt: skip


def transformer_torch_weights(data: dict) -> dict[str, np.ndarray]:
    """The transformer's Keras weights (w0..w12: embeddings (V, D); query, key, value kernels
    (D, H, Dh) and biases (H, Dh); the attention output kernel (H, Dh, D) and bias (D,);
    LayerNormalization γ, β; the Dense kernel (D, K) and bias) by the parameter names of
    bench/peer_torch.py's module: nn.Linear weights (out, in), the heads' axes flattened
    head-major (the order in which Keras' einsum contracts them)."""
    w = [data[f"w{i}"] for i in range(13)]
    d = w[0].shape[1]
    out = {"embedding.weight": w[0]}
    for i, name in enumerate(("query", "key", "value")):
        out[f"{name}.weight"] = w[1 + 2 * i].reshape(d, -1).T  # (D, H·Dh) → (H·Dh, D)
        out[f"{name}.bias"] = w[2 + 2 * i].reshape(-1)
    out["out_proj.weight"] = w[7].reshape(-1, d).T
    out["out_proj.bias"] = w[8]
    out["norm.weight"], out["norm.bias"] = w[9], w[10]
    out["head.weight"], out["head.bias"] = w[11].T, w[12]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def failure(exc: BaseException) -> str:
    """An exception as a user meets it: its type and the first lines of its message."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:300]}" if msg else type(exc).__name__


def emit(row: dict):
    """The worker's result: one JSON line, last on stdout."""
    row["peak"] = peak_bytes()
    print(json.dumps(row), flush=True)


# -- the sigma worker ---------------------------------------------------------------------------
def sigma_worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import sigma

    data = load_data(args.data)
    if args.task.startswith(("cnn", "tf")):
        return sigma_cnn_worker(args, data)
    name = "iris" if args.task == "iris" else "mlp"

    def build(dtype):
        widths = IRIS if name == "iris" else MLP
        net = sigma.lab.mlp(
            widths[0], widths[1:-1], widths[-1], activation=ACTIVATION[name], dtype=dtype
        )
        net.set_weights([a.astype(dtype) for pair in layer_weights(data) for a in pair])
        return net

    net = build("float32")
    x, y, xt = (data[k].astype("float32") for k in ("x_train", "y_train", "x_test"))
    a, b = args.alpha, args.beta
    row = {
        "library": "sigma",
        "version": f"sigma {sigma.__version__}, TensorFlow {tf.__version__}",
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "rss_setup": resident_bytes(),
    }
    out = {}
    if name == "iris":
        row["fit"], la = measure(
            lambda: sigma.Laplace(net, x, y, structure="full", alpha=a, beta=b), args.repeats
        )
        row["pred"], (_, std) = measure(lambda: la.predict(xt), args.repeats)
        out["std32"], out["var32"] = std, la.predict(xt, noise=False)[1] ** 2

        def alpha_only():
            la.alpha, la.beta = 1.0, b
            return la.optimize_evidence(fix_beta=True).alpha

        def alpha_beta():
            la.alpha, la.beta = 1.0, 1.0
            la.optimize_evidence()
            return la.alpha, la.beta

        row["ev_alpha"], row["alpha_found"] = measure(alpha_only, args.repeats)
        row["ev_both"], ab = measure(alpha_beta, args.repeats)
        row["alpha_beta_found"] = [float(v) for v in ab]
        row["log_evidence"] = float(la.log_evidence(alpha=a, beta=b))  # at the check's α, β
        # float64 from the stored float64 data (not from the float32 copies above)
        x64, y64, xt64 = (data[k].astype("float64") for k in ("x_train", "y_train", "x_test"))
        la64 = sigma.Laplace(build("float64"), x64, y64, structure="full", alpha=a, beta=b)
        out["std64"] = la64.predict(xt64)[1]
        out["var64"] = la64.predict(xt64, noise=False)[1] ** 2
    else:
        structure = args.task.split("-")[1]
        row["fit"], la = measure(
            lambda: sigma.Laplace(net, x, y, structure=structure, alpha=a, beta=b), args.repeats
        )
        row["pred"], (_, std) = measure(lambda: la.predict(xt), args.repeats)
        out["std32"], out["var32"] = std, la.predict(xt, noise=False)[1] ** 2
    np.savez(args.out, **out)
    emit(row)


def sigma_cnn_worker(args, data):
    """The CNN or the transformer of bench/cnn.py, classification: the fit and predict_proba
    (probit); for the transformer also the logit variances diag J A⁻¹ Jᵀ (untimed, the check)."""
    import tensorflow as tf
    from cnn import network

    import sigma

    model = "transformer" if args.task.startswith("tf") else "cnn"
    net = network(model, 0)
    net.set_weights([data[f"w{i}"] for i in range(len(net.weights))])
    x, y, xt = data["x_train"], data["y_train"], data["x_test"]
    structure, weights = {
        "diag": ("diag", "all"), "kfac": ("kfac", "all"), "last": ("kfac", "last_layer")
    }[args.task.split("-")[1]]  # fmt: skip
    row = {
        "library": "sigma",
        "version": f"sigma {sigma.__version__}, TensorFlow {tf.__version__}",
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "rss_setup": resident_bytes(),
    }

    def fit():
        return sigma.Laplace(
            net, x, y, likelihood="classification", structure=structure, weights=weights,
            alpha=args.alpha,
        )  # fmt: skip

    out = {}
    try:
        row["fit"], la = measure(fit, args.repeats)
        row["pred"], out["proba"] = measure(lambda: la.predict_proba(xt), args.repeats)
        if model == "transformer":
            out["fvar"] = np.diagonal(la.predictive_covariance(xt), axis1=1, axis2=2)
    except Exception as exc:  # reported in the table, not a crash of the run
        row["failed"] = failure(exc)
    np.savez(args.out, **out)
    emit(row)


# -- the parent: data, training, workers, table -------------------------------------------------
def prepare(args, tmp: Path) -> dict[str, Path]:
    """Data and trained Keras weights for both networks, written once to npz files."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sigma

    try:
        from sigma.data import teacher_regression
    except ImportError:  # the notebook helpers live in sigma.lab after the core's redesign
        from sigma.lab.data import teacher_regression

    paths = {}
    tasks = args.tasks.split(",")
    if "iris" in tasks:
        x, xt, y, _ = sigma.lab.iris_split(test_size=0.33, seed=0)
        net = sigma.lab.mlp(*IRIS[:1], IRIS[1:-1], IRIS[-1], activation="tanh", seed=args.seed)
        sigma.lab.train(net, x, y, epochs=150, batch_size=10, learning_rate=3e-3, seed=args.seed)
        paths["iris"] = tmp / "iris.npz"
        np.savez(paths["iris"], x_train=x, y_train=y, x_test=xt, **kernels(net))

    if any(t.startswith("mlp") for t in tasks):
        x, xt, y, _ = teacher_regression(args.n, args.test, seed=args.seed)
        x, xt, y = x.astype("float32"), xt.astype("float32"), y.astype("float32")
        net = sigma.lab.mlp(MLP[0], MLP[1:-1], MLP[-1], activation="relu", seed=args.seed)
        sigma.lab.train(
            net, x, y, epochs=args.epochs, batch_size=128, learning_rate=1e-3, seed=args.seed
        )
        paths["mlp"] = tmp / "mlp.npz"
        np.savez(paths["mlp"], x_train=x, y_train=y, x_test=xt, **kernels(net))
    if any(t.startswith("cnn") for t in tasks):
        from cnn import prepare as prepare_cnn

        paths["cnn"] = tmp / "cnn.npz"
        info = prepare_cnn(args.cnn_n, args.cnn_test, args.cnn_epochs, args.seed, paths["cnn"])
        print(f"CNN: test accuracy {info['test_accuracy']:.3f}", file=sys.stderr)
    if any(t.startswith("tf") for t in tasks):
        from cnn import prepare as prepare_cnn

        paths["tf"] = tmp / "tf.npz"  # with the Keras logits of the test data (the torch check)
        info = prepare_cnn(
            args.tf_n, args.tf_test, args.tf_epochs, args.seed, paths["tf"], model="transformer"
        )
        print(
            f"transformer: {info['params']:,} weights, test accuracy {info['test_accuracy']:.3f}",
            file=sys.stderr,
        )
    return paths


def kernels(net) -> dict[str, np.ndarray]:
    """Keras weights as kernel0, bias0, kernel1, ... (kernels (in, out), as Keras stores them)."""
    w = net.get_weights()
    return {
        **{f"kernel{i}": k for i, k in enumerate(w[0::2])},
        **{f"bias{i}": b for i, b in enumerate(w[1::2])},
    }


def process_rss(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc; 0 when gone or unknown)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_worker(cmd, env=None, mem_cap: float | None = None, time_cap: float | None = None) -> dict:
    """Run a worker; its JSON line, or {"failed": the last line of its stderr}. With ``mem_cap``
    (bytes) its resident memory is watched every 50 ms and the worker killed when it exceeds
    the cap: the result is then {"killed": peak bytes seen, "seconds": time until then}; with
    ``time_cap`` (seconds) a worker still running then is killed: {"stopped": seconds}."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        seen = 0
        while proc.poll() is None:
            seen = max(seen, process_rss(proc.pid))
            if mem_cap and seen > mem_cap:
                proc.kill()
                proc.wait()
                return {"killed": seen, "seconds": time.perf_counter() - t0}
            if time_cap and time.perf_counter() - t0 > time_cap:
                proc.kill()
                proc.wait()
                return {"stopped": time.perf_counter() - t0, "seconds": time.perf_counter() - t0}
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        print(f"worker failed: {' '.join(cmd[:4])} ...\n{stderr[-3000:]}", file=sys.stderr)
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        return {"failed": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}
    return json.loads(stdout.strip().splitlines()[-1])


def max_rel(a, b) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-python", default=str(ROOT / ".venv-peer" / "bin" / "python"))
    p.add_argument("--n", type=int, default=10_000, help="MLP training samples")
    p.add_argument("--test", type=int, default=1_000, help="MLP test points for the predictive")
    p.add_argument("--epochs", type=int, default=2, help="MLP training epochs")
    p.add_argument("--repeats", type=int, default=5, help="warm runs per Iris step (median)")
    p.add_argument("--mlp-repeats", type=int, default=2, help="warm runs per MLP step (median)")
    p.add_argument("--pred-batch", type=int, default=50, help="laplace-torch predictive batch")
    p.add_argument(
        "--backend",
        choices=("backpack", "curvlinops"),
        default="backpack",
        help="laplace-torch curvature backend for the MLP rows (Iris: its default, curvlinops)",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="α for the fits and the σ check")
    p.add_argument("--iris-beta", type=float, default=25.0, help="β on Iris")
    p.add_argument("--mlp-beta", type=float, default=100.0, help="β on the MLP")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {','.join(TASKS)}")
    p.add_argument("--cnn-n", type=int, default=10_000, help="CNN training images")
    p.add_argument("--cnn-test", type=int, default=1_000, help="CNN test points")
    p.add_argument("--cnn-epochs", type=int, default=1, help="CNN training epochs")
    p.add_argument("--cnn-repeats", type=int, default=1, help="warm runs per CNN step (median)")
    p.add_argument("--tf-n", type=int, default=10_000, help="transformer training sequences")
    p.add_argument("--tf-test", type=int, default=1_000, help="transformer test sequences")
    p.add_argument("--tf-epochs", type=int, default=3, help="transformer training epochs")
    p.add_argument(
        "--tf-repeats", type=int, default=1, help="warm runs per transformer step (median)"
    )
    p.add_argument(
        "--mem-cap", type=float, default=12.0,
        help="GB of resident memory at which a worker is killed (reported as killed)",
    )  # fmt: skip
    p.add_argument(
        "--time-cap", type=float, default=None,
        help="seconds after which a worker is killed (reported as stopped; default: none)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    sys.path.insert(0, str(ROOT))  # this checkout's sigma, whatever is installed
    if args.worker:
        sigma_worker(worker_args())
        return
    if not Path(args.peer_python).exists():
        sys.exit(f"no peer interpreter at {args.peer_python}: build it with `make bench-peer`")

    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = prepare(args, tmp)
        print(f"data and training: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for task in [t for t in args.tasks.split(",") if t]:
            name = task.split("-")[0]
            beta = {"iris": args.iris_beta, "mlp": args.mlp_beta, "cnn": 1.0, "tf": 1.0}[name]
            repeats = {
                "iris": args.repeats, "mlp": args.mlp_repeats, "cnn": args.cnn_repeats,
                "tf": args.tf_repeats,
            }  # fmt: skip
            common = ["--task", task, "--data", str(paths[name]), "--alpha", str(args.alpha)]
            common += ["--beta", str(beta), "--pred-batch", str(args.pred_batch)]
            common += ["--repeats", str(repeats[name])]
            # the transformer: when laplace-torch fails with one backend, the other is tried
            backends = [args.backend]
            if name == "tf":
                backends += [b for b in BACKENDS if b != args.backend]
            runs = [("sigma", [sys.executable, __file__, "--worker", "sigma"], args.backend)]
            runs += [
                ("torch", [args.peer_python, str(ROOT / "bench" / "peer_torch.py")], b)
                for b in backends
            ]
            attempts = []
            for lib, cmd, backend in runs:
                if lib == "torch" and attempts and "pred" in attempts[-1]:
                    break  # a backend ran: the other is not tried
                outfile = tmp / f"{lib}-{task}-{backend}.npz"
                t1 = time.perf_counter()
                row = run_worker(
                    [*cmd, *common, "--backend", backend, "--out", str(outfile)],
                    env=env,
                    mem_cap=args.mem_cap * 1e9,
                    time_cap=args.time_cap,
                )
                seconds = time.perf_counter() - t1
                print(f"{task} {lib} ({backend}): {seconds:.0f} s", file=sys.stderr)
                if row is not None and outfile.exists():
                    row["sigma_out"] = load_data(outfile)
                if lib == "sigma":
                    results[(task, lib)] = row
                    continue
                if row is not None:
                    row.setdefault("backend_name", backend)
                attempts.append(row or {"failed": "no result", "backend_name": backend})
            # the first attempt that ran, else the last; the others kept for the notes
            ran = [r for r in attempts if "pred" in r]
            best = ran[0] if ran else attempts[-1]
            best["other_attempts"] = [
                {k: r.get(k) for k in ("backend_name", "failed", "killed", "stopped", "seconds")}
                for r in attempts
                if r is not best
            ]
            results[(task, "torch")] = best
    print_table(results, args)


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}" if v < 100 else f"{v:.0f}"


def print_table(results, args):
    mb = 2.0**20
    any_row = next((r for r in results.values() if r), None)
    if any_row is None:
        print("no results")
        return
    versions = {lib: r["version"] for (_, lib), r in results.items() if r and "version" in r}
    threads = {lib: r["threads"] for (_, lib), r in results.items() if r and "threads" in r}
    print(
        f"sigma vs laplace-torch, CPU ({os.cpu_count()} cores; threads: sigma "
        f"{threads.get('sigma')}, torch {threads.get('torch')}), float32 unless stated; "
        f"warm = median of {args.repeats} runs (Iris) / {args.mlp_repeats} runs (MLP) / "
        f"{args.cnn_repeats} runs (CNN) / {args.tf_repeats} runs (transformer; 0: warm = the "
        "cold run)"
    )
    for lib in ("sigma", "torch"):
        if lib in versions:
            print(f"  {lib}: {versions[lib]}")
    steps = [
        ("iris", "fit", "Iris 4-16-16-3 full GGN fit"),
        ("iris", "pred", "Iris predictive σ, 50 points"),
        ("iris", "ev_alpha", "Iris α by evidence (β fixed)"),
        ("iris", "ev_both", "Iris α, β by evidence"),
        ("mlp-diag", "fit", f"MLP diag fit, N={args.n:,}"),
        ("mlp-diag", "pred", f"MLP diag predictive, {args.test:,} pts"),
        ("mlp-kfac", "fit", f"MLP kfac/kron fit, N={args.n:,}"),
        ("mlp-kfac", "pred", f"MLP kfac/kron predictive, {args.test:,}"),
        ("cnn-kfac", "fit", f"CNN kfac/kron fit, N={args.cnn_n:,}"),
        ("cnn-kfac", "pred", f"CNN kfac/kron predict_proba, {args.cnn_test:,}"),
        ("cnn-diag", "fit", f"CNN diag fit, N={args.cnn_n:,}"),
        ("cnn-diag", "pred", f"CNN diag predict_proba, {args.cnn_test:,}"),
        ("cnn-last", "fit", f"CNN last-layer kfac/kron fit, N={args.cnn_n:,}"),
        ("cnn-last", "pred", f"CNN last-layer predict_proba, {args.cnn_test:,}"),
        ("tf-kfac", "fit", f"Transformer kfac/kron fit, N={args.tf_n:,}"),
        ("tf-kfac", "pred", f"Transformer kfac/kron predict_proba, {args.tf_test:,}"),
        ("tf-diag", "fit", f"Transformer diag fit, N={args.tf_n:,}"),
        ("tf-diag", "pred", f"Transformer diag predict_proba, {args.tf_test:,}"),
        ("tf-last", "fit", f"Transformer last-layer kfac/kron fit, N={args.tf_n:,}"),
        ("tf-last", "pred", f"Transformer last-layer predict_proba, {args.tf_test:,}"),
    ]
    head = (
        f"{'step':<44} {'sigma cold':>10} {'sigma warm':>10} {'torch cold':>10} "
        f"{'torch warm':>10} {'warm t/s':>8} {'sigma ΔMB':>9} {'torch ΔMB':>9}"
    )
    print(head)
    print("-" * len(head))
    for task, step, label in steps:
        s, t = results.get((task, "sigma")), results.get((task, "torch"))
        if s is None and t is None:
            continue
        killed = {
            lib: f"killed {r['killed'] / 1e9:.1f}G"
            if "killed" in r
            else f"stopped {r['stopped']:.0f}s"
            if "stopped" in r
            else "failed"
            for lib, r in (("sigma", s), ("torch", t))
            if r and ("killed" in r or "stopped" in r or (r.get("failed") and step not in r))
        }
        s, t = (s or {}).get(step, {}), (t or {}).get(step, {})
        ratio = t["warm"] / s["warm"] if s.get("warm") and t.get("warm") else None
        sc, sw = (killed["sigma"], "") if "sigma" in killed else (s.get("cold"), s.get("warm"))
        tc, tw = (killed["torch"], "") if "torch" in killed else (t.get("cold"), t.get("warm"))
        print(
            f"{label:<44} {fmt(sc):>10} {fmt(sw):>10} {fmt(tc):>10} {fmt(tw):>10} "
            f"{fmt(ratio, 1) + '×' if ratio else '—':>8} "
            f"{fmt(s['mem'] / mb, 0) if 'mem' in s else '—':>9} "
            f"{fmt(t['mem'] / mb, 0) if 'mem' in t else '—':>9}"
        )
    print("seconds; warm t/s = laplace-torch warm / sigma warm; ΔMB = peak resident memory above")
    print("the level before the step (cold and warm runs), sampled every 5 ms.")
    print()
    print(f"{'process':<12} {'library':<8} {'setup MB':>9} {'peak MB':>8}  backend / notes")
    for (task, lib), r in results.items():
        for a in (r or {}).get("other_attempts", []):  # laplace-torch backends that did not run
            if a.get("killed"):
                why = f"killed after {a['seconds']:.0f} s at {a['killed'] / mb:.0f} MB resident"
            elif a.get("stopped"):
                why = f"stopped at the time cap after {a['stopped']:.0f} s"
            else:
                why = f"failed: {a.get('failed')}"
            print(f"{task:<12} {lib:<8} {'':>9} {'':>8}  --backend {a['backend_name']}: {why}")
        if r is None:
            print(f"{task:<12} {lib:<8} failed (see stderr)")
            continue
        if "killed" in r:
            print(
                f"{task:<12} {lib:<8} killed after {r['seconds']:.0f} s at {r['killed'] / mb:.0f}"
                f" MB resident (cap {args.mem_cap:g} GB)"
                + (f", --backend {r['backend_name']}" if r.get("backend_name") else "")
            )
            continue
        if "stopped" in r:
            print(
                f"{task:<12} {lib:<8} stopped at the time cap after {r['stopped']:.0f} s "
                f"(--backend {r.get('backend_name')})"
            )
            continue
        note = r.get("backend", "")
        if r.get("failed"):
            note = f"{note}; failed: {r['failed']}" if note else f"failed: {r['failed']}"
        setup = f"{r['rss_setup'] / mb:9.0f}" if "rss_setup" in r else f"{'—':>9}"
        peak = f"{r['peak'] / mb:8.0f}" if "peak" in r else f"{'—':>8}"
        print(f"{task:<12} {lib:<8} {setup} {peak}  {note}")
        if "logit_check" in r:
            print(f"{'':<12} {'':<8} {'':>9} {'':>8}  {r['logit_check']}")
    print()
    print("σ agreement (same weights, same α and β): max over points and outputs of |s − t| / |t|")
    checks = [
        ("iris", "32", f"Iris full GGN, float32 (α={args.alpha:g}, β={args.iris_beta:g})"),
        ("iris", "64", f"Iris full GGN, float64 (α={args.alpha:g}, β={args.iris_beta:g})"),
        ("iris", "64_f32eye", "  same, laplace-torch with torch's default dtype left float32"),
        ("mlp-diag", "32", f"MLP diag GGN, float32 (α={args.alpha:g}, β={args.mlp_beta:g})"),
        ("mlp-kfac", "32", "MLP kfac vs kron, float32 (definitions differ; for information)"),
    ]
    for task, prec, label in checks:
        s, t = results.get((task, "sigma")), results.get((task, "torch"))
        if not s or not t or f"var{prec[:2]}" not in s.get("sigma_out", {}):
            continue
        so, to = s["sigma_out"], t.get("sigma_out", {})
        if f"var{prec}" not in to:
            continue
        dv = max_rel(so[f"var{prec[:2]}"], to[f"var{prec}"])
        ds = max_rel(so[f"std{prec[:2]}"], to[f"std{prec}"])
        print(f"  {label:<66} gᵀA⁻¹g {dv:8.1e}   σ (with 1/β) {ds:8.1e}")
    for task in (*CNN_TASKS, *TF_TASKS):
        s, t = results.get((task, "sigma")), results.get((task, "torch"))
        if s and t and "proba" in s.get("sigma_out", {}) and "proba" in t.get("sigma_out", {}):
            d = np.abs(s["sigma_out"]["proba"] - t["sigma_out"]["proba"]).max()
            kind = "same curvature" if task.endswith("diag") else "definitions differ"
            print(f"  {task}: predict_proba (probit) max |p_sigma − p_torch| {d:.1e} ({kind})")
        if s and t and "fvar" in s.get("sigma_out", {}) and "fvar" in t.get("sigma_out", {}):
            print(
                f"  {task}: logit variances diag J A⁻¹ Jᵀ, max relative difference "
                f"{max_rel(s['sigma_out']['fvar'], t['sigma_out']['fvar']):.1e}"
            )
    s, t = results.get(("iris", "sigma")), results.get(("iris", "torch"))
    if not (s and t and "sigma_out" in s and "sigma_out" in t):
        return
    if "var64" in t["sigma_out"]:
        ref = s["sigma_out"]["var64"]
        print(
            "  Iris float32 against the float64 gᵀA⁻¹g (where the float32 difference comes from): "
            f"sigma {max_rel(s['sigma_out']['var32'], ref):.1e}, laplace-torch "
            f"{max_rel(t['sigma_out']['var32'], ref):.1e}"
        )
    if s and t:
        print()
        print(
            f"log evidence on Iris at α={args.alpha:g}, β={args.iris_beta:g}: sigma "
            f"{s['log_evidence']:.6f}, laplace-torch {t['log_evidence']:.6f} "
            "(log_marginal_likelihood, float32)"
        )
        print("evidence optimum on Iris (same curvature):")
        print(
            f"  α with β={args.iris_beta:g} fixed: sigma {s['alpha_found']:.6g} (MacKay fixed point), "
            f"laplace-torch {t['alpha_found']:.6g} (100 Adam steps, lr 0.1)"
        )
        sa, sb = s["alpha_beta_found"]
        ta, tb = t["alpha_beta_found"]
        print(
            f"  α, β together:   sigma α={sa:.6g} β={sb:.6g}; laplace-torch α={ta:.6g} "
            f"β={tb:.6g} (100 Adam steps on log α, log σ_noise)"
        )


if __name__ == "__main__":
    main()
