"""Scalable structures on a 784-256-256-10 MLP with N = 10,000: fit and predictive cost.

The unit is one gradient pass: ∇E_D over all N samples (forward + backward, traced once, warm,
in batches of --grad-batch). For each structure it times the fit (a fresh structure each run,
tracing included) and the predictive variance of --test points (median of the calls after the
first; the first call, which traces, is shown too), and reports both in seconds and as
multiples of the gradient pass measured in the same process. Each structure runs in its own
subprocess, so its peak memory is its own: the process's peak resident size (VmHWM; ru_maxrss
would also count the parent's size at the fork) and the increase over the resident size after
setup during the fit and during the predictive (sigma.memory.PeakMemory, sampled every 5 ms).

    .venv/bin/python bench/scale.py [--n 10000] [--test 1000] [--repeats 3] [--batch-size B]
                                    [--structures diag,kfac,lowrank,last_layer]

The data are synthetic, generated from --seed (no download): x ~ N(0, I_784) and 10 targets
t = tanh(x W₁) W₂ + 0.1 ε. The model is trained for one epoch (Adam, batch 128) in the parent
process and its weights handed to the workers. "full" is not run: P = 269,322 weights would
need P² ≈ 580 GB. The comparison with laplace-torch, measured side by side in one run, is
``make bench-peer`` (bench/peer.py).
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_probe import peak_bytes  # noqa: E402  (the same measurement as the peer comparison)

WIDTHS = (784, 256, 256, 10)


def data(n: int, n_test: int, seed: int):
    """Synthetic regression data: x ~ N(0, I), t = tanh(x W₁) W₂ + 0.1 ε (float32)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_test, WIDTHS[0])).astype(np.float32)
    w1 = rng.normal(size=(WIDTHS[0], 32)) / np.sqrt(WIDTHS[0])
    w2 = rng.normal(size=(32, WIDTHS[-1])) / np.sqrt(32)
    t = (np.tanh(x @ w1) @ w2 + 0.1 * rng.normal(size=(n + n_test, WIDTHS[-1]))).astype(np.float32)
    return x[:n], t[:n], x[n:]


def model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((WIDTHS[0],))]
    layers += [keras.layers.Dense(w, activation="relu") for w in WIDTHS[1:-1]]
    return keras.Sequential([*layers, keras.layers.Dense(WIDTHS[-1])])


def gradient_pass(net, x, y, batch_size: int):
    """A function running one warm gradient pass of E_D over (x, y); traced once here."""
    import tensorflow as tf

    spec = [tf.TensorSpec([None, x.shape[1]], tf.float32), tf.TensorSpec([None, y.shape[1]])]

    @tf.function(input_signature=spec)
    def grad(xb, yb):
        with tf.GradientTape() as tape:
            e = 0.5 * tf.reduce_sum(tf.square(net(xb, training=False) - yb))
        return tape.gradient(e, net.trainable_variables)

    def run():
        for s in range(0, len(x), batch_size):
            out = grad(x[s : s + batch_size], y[s : s + batch_size])
        return [g.numpy() for g in out]

    run()
    return run


def timed(fn, repeats: int):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def worker(args) -> dict:
    """One structure in this process: the gradient-pass unit, fits, predictives, memory."""
    from sigma import structures
    from sigma.memory import PeakMemory, resident_bytes

    x, y, x_test = data(args.n, args.test, args.seed)
    net = model(args.seed)
    net.load_weights(args.weights)
    unit = statistics.median(timed(gradient_pass(net, x, y, args.grad_batch), args.repeats)[0])
    row = {"structure": args.worker, "unit": unit, "rss_setup": resident_bytes()}
    if args.worker == "gradient":
        row["peak"] = peak_bytes()
        return row
    cls = structures.get(args.worker)

    def fit():
        return cls().fit(
            net, x, y, likelihood="regression", curvature="ggn", batch_size=args.batch_size
        )

    with PeakMemory() as mem_fit:
        fit_times, structure = timed(fit, args.repeats)
    with PeakMemory() as mem_pred:
        pred_times, var = timed(
            lambda: structure.predictive_variance(net, x_test, 1.0, 1.0), args.repeats + 1
        )
    assert var.shape == (args.test, WIDTHS[-1]) and np.all(np.isfinite(var))
    row.update(
        fit=statistics.median(fit_times),
        fit_all=fit_times,
        pred_first=pred_times[0],
        pred=statistics.median(pred_times[1:]),
        mem_fit=mem_fit.bytes,
        mem_pred=mem_pred.bytes,
        peak=peak_bytes(),
    )
    return row


def train_and_save(args, path):
    import keras

    x, y, _ = data(args.n, args.test, args.seed)
    net = model(args.seed)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    net.fit(x, y, epochs=1, batch_size=128, verbose=0, shuffle=False)
    net.save_weights(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="training samples")
    parser.add_argument("--test", type=int, default=1_000, help="test points for the predictive")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per batch for the structures (default: each structure's automatic choice)",
    )
    parser.add_argument("--grad-batch", type=int, default=2000, help="batch of the gradient pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--structures", default="diag,kfac,lowrank,last_layer")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from sigma import structures

    wanted = [s for s in args.structures.split(",") if s]
    missing = [s for s in wanted if s not in structures.names()]
    names = ["gradient"] + [s for s in wanted if s in structures.names()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "mlp.weights.h5")
        train_and_save(args, weights)
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--weights", weights]
            cmd += ["--n", str(args.n), "--test", str(args.test), "--repeats", str(args.repeats)]
            cmd += ["--grad-batch", str(args.grad_batch), "--seed", str(args.seed)]
            cmd += [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_table(rows, args, missing)


def print_table(rows, args, missing):
    mb = 2.0**20
    p = sum(a * b + b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=False))
    print(
        f"MLP {'-'.join(map(str, WIDTHS))} (P = {p:,}), N = {args.n:,} regression, "
        f"K = {WIDTHS[-1]}, predictive for {args.test:,} points, batch "
        f"{args.batch_size or 'auto'} (gradient pass {args.grad_batch}), "
        f"median of {args.repeats}; unit = one gradient pass over N (measured in each worker)"
    )
    head = (
        f"{'structure':<11} {'unit s':>7} {'fit s':>7} {'fit ×':>6} {'pred s':>7} {'pred ×':>7} "
        f"{'1st pred s':>10} {'Δfit MB':>8} {'Δpred MB':>8} {'peak MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["structure"] == "gradient":
            print(
                f"{'gradient':<11} {r['unit']:7.3f} {'':>7} {'1.0':>6} {'':>7} {'':>7} {'':>10} "
                f"{'':>8} {'':>8} {r['peak'] / mb:8.0f}"
            )
            continue
        print(
            f"{r['structure']:<11} {r['unit']:7.3f} {r['fit']:7.2f} {r['fit'] / r['unit']:6.1f} "
            f"{r['pred']:7.3f} {r['pred'] / r['unit']:7.2f} {r['pred_first']:10.2f} "
            f"{r['mem_fit'] / mb:8.0f} {r['mem_pred'] / mb:8.0f} {r['peak'] / mb:8.0f}"
        )
    print(
        "fit: a fresh structure per run, tracing included; pred: median after the first call "
        "(1st pred traces the predictive graph); Δ: peak resident memory above the level after "
        "setup; peak: the worker process's peak resident size (TensorFlow itself ≈ 0.6–0.8 GB)."
    )
    if missing:
        print(f"not registered (skipped): {', '.join(missing)}")


if __name__ == "__main__":
    main()
