"""sigma alone on the Iris 4-16-16-3 network: where the time of the small-network steps goes.

    .venv/bin/python bench/iris.py [--repeats 5] [--scan 20]

The network is bench/peer.py's: a 4-16-16-3 tanh MLP (403 weights) trained as a regression on
the one-hot targets of scikit-learn's Iris (100 training points, 50 test points; no download).
The table has, for each step, the median wall-clock time over --repeats runs (and the spread),
and how many times TensorFlow traced a function during the step:

* full GGN fit, cold (the first Laplace object in the process) and warm (a new Laplace object
  on the same model, --repeats times);
* the predictive σ for the 50 test points, first call and warm;
* the evidence optimisation of α and β (``optimize_evidence()`` from α = β = 1);
* a β scan of --scan values on a log grid, two ways: one Laplace object whose β is set before
  each predictive, and one new Laplace object per β (fit and predictive each).

Traces are counted by wrapping TensorFlow's concrete-function creation (every trace of a
``tf.function``, the project's and Keras' alike, goes through it); "retracing" counts the
warnings TensorFlow logs when a function retraces often ('tensorflow' logger). A warm step that
traces is paying for graph construction again on every call.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sigma

import numpy as np  # noqa: E402


class TraceCounter(logging.Handler):
    """Counts tf.function traces (by wrapping the creation of concrete functions) and the
    'retracing' warnings of the 'tensorflow' logger."""

    def __init__(self):
        super().__init__()
        self.traces = collections.Counter()
        self.retracing = 0

    def emit(self, record):
        if "retracing" in record.getMessage():
            self.retracing += 1

    def install(self):
        from tensorflow.python.eager.polymorphic_function import tracing_compilation as tc

        create = tc._create_concrete_function

        def counted(function_type, type_context, func_graph, tracing_options):
            self.traces[getattr(tracing_options, "name", "?")] += 1
            return create(function_type, type_context, func_graph, tracing_options)

        tc._create_concrete_function = counted
        logging.getLogger("tensorflow").addHandler(self)
        return self

    def snapshot(self):
        return sum(self.traces.values()), self.retracing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per step (median)")
    parser.add_argument("--scan", type=int, default=20, help="β values in the scan")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    import sigma

    counter = TraceCounter().install()
    x, xt, y, _ = sigma.lab.iris_split(test_size=0.33, seed=args.seed)
    x, xt, y = x.astype("float32"), xt.astype("float32"), y.astype("float32")
    net = sigma.lab.mlp(4, (16, 16), 3, activation="tanh", seed=args.seed)
    sigma.lab.train(net, x, y, epochs=150, batch_size=10, learning_rate=3e-3, seed=args.seed)
    a, b = args.alpha, args.beta
    betas = np.geomspace(1.0, 1000.0, args.scan)
    rows = []

    def step(label, fn, repeats):
        """Run fn `repeats` times; one table row: median, min, max, traces/run, retracing."""
        t0, r0 = counter.snapshot()
        times, out = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        t1, r1 = counter.snapshot()
        rows.append((label, times, (t1 - t0) / repeats, r1 - r0))
        return out

    def fit(beta=b):
        return sigma.Laplace(net, x, y, structure="full", alpha=a, beta=beta)

    la = step("full GGN fit, cold (first Laplace)", fit, 1)
    la = step("full GGN fit, warm (new Laplace, same model)", fit, args.repeats)
    step("predictive σ, 50 points, first call", lambda: la.predict(xt), 1)
    step("predictive σ, 50 points, warm", lambda: la.predict(xt), args.repeats)

    def evidence():
        la.alpha, la.beta = 1.0, 1.0
        return la.optimize_evidence()

    step("evidence: α, β by optimize_evidence()", evidence, args.repeats)
    alpha_opt, beta_opt = la.alpha, la.beta

    def scan_one():
        out = []
        for beta in betas:
            la.beta = float(beta)
            out.append(la.predict(xt)[1])
        return out

    def scan_many():
        return [fit(float(beta)).predict(xt)[1] for beta in betas]

    step(f"β scan, {args.scan} β on one Laplace (β set, predict)", scan_one, args.repeats)
    step(f"β scan, {args.scan} Laplace objects (fit, predict)", scan_many, args.repeats)

    print(
        f"Iris 4-16-16-3 tanh MLP (P = {sigma.num_params(net)}), N = {len(x)} training, "
        f"{len(xt)} test points, float32, structure='full', α={a:g}, β={b:g}; sigma "
        f"{sigma.__version__}, TensorFlow {tf.__version__}, {os.cpu_count()} cores; "
        f"median of {args.repeats} runs (cold rows: 1)"
    )
    head = f"{'step':<52} {'median s':>9} {'min s':>8} {'max s':>8} {'traces/run':>10} {'retracing':>9}"
    print(head)
    print("-" * len(head))
    for label, times, traces, retracing in rows:
        print(
            f"{label:<52} {statistics.median(times):9.4f} {min(times):8.4f} {max(times):8.4f} "
            f"{traces:10.1f} {retracing:9d}"
        )
    print(
        "traces/run: tf.function traces (concrete functions created) per run of the step; "
        "retracing: TensorFlow's 'triggered tf.function retracing' warnings during the step."
    )
    print("every run, in order (s):")
    for label, times, _, _ in rows:
        if len(times) > 1:
            print(f"  {label:<52} " + " ".join(f"{t:.4g}" for t in times))
    print(f"evidence optimum: α = {alpha_opt:.6g}, β = {beta_opt:.6g}")
    top = counter.traces.most_common(6)
    print("most traced functions over the whole run: " + ", ".join(f"{n} ×{c}" for n, c in top))


if __name__ == "__main__":
    main()
