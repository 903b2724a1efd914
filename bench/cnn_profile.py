"""Where the time of the layer-wise structures goes on the CNN of bench/cnn.py (issue 26).

    .venv/bin/python bench/cnn_profile.py [--n 1000] [--test 200] [--what capture,fit,eigh]
        [--model transformer]

Prints, for the sigma on PYTHONPATH (this checkout by default):

* the layer plan (D, C, positions T per block), the batch size the structures choose and how
  many graph calls result;
* per graph call of one batch: the forward pass alone, the capture (forward, the K backward
  passes to the pre-activations, the patches), and the capture with each structure's batch
  statistics; the same per sample;
* a fit of each structure with its parts timed: the accumulation over the data (graph calls,
  fetching the sums to NumPy) and the finish (the eigendecompositions);
* eigendecompositions of a D×D factor the size of the Dense layer's (numpy/SciPy drivers,
  float32/float64, 1 or all BLAS threads, TensorFlow's own eigh).

Timings are wall seconds on this machine, medians of --repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from cnn import data, gradient_pass, network, train  # noqa: E402


def med(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=0, help="batch for the per-call timings (0: auto)")
    p.add_argument("--what", default="capture,fit,predict,eigh")
    p.add_argument("--eigh-n", type=int, default=9217)
    p.add_argument("--model", choices=("cnn", "transformer"), default="cnn")
    p.add_argument("--fit-runs", type=int, default=1, help="fits per structure (1 or 2)")
    args = p.parse_args()
    what = set(args.what.split(","))

    import tensorflow as tf

    import sigma
    from sigma.curvature import capture as cap_mod
    from sigma.curvature.engine import engine

    print(f"sigma from {Path(sigma.__file__).parent}")
    x, y, xt, yt = data(args.n, args.test, 0, args.model)
    net = train(network(args.model, 0), x, y, args.epochs, 0)
    unit = med(gradient_pass(net, x, y, 500), args.repeats)
    print(f"unit: one gradient pass over N = {args.n}: {unit:.3f} s")

    eng = engine(net)
    plan = eng.layer_plan(x[:8], fast=True)
    k = 10
    per = cap_mod.per_sample_elements(plan, k)
    bs = cap_mod.layer_batch_size(args.n, per, None)
    print(f"per_sample_elements = {per:,}; LAYER_BUDGET = {cap_mod.LAYER_BUDGET:,}; batch {bs}")
    print(f"  -> {-(-args.n // bs)} graph calls for the fit over N = {args.n}")
    try:
        from sigma.structures import layerwise as lw

        for name, grads in (("kfac", False), ("diag/ekfac", True)):
            b2 = lw.layerwise_batch_size(
                args.n, lw.fit_elements(plan, k, per_sample_gradients=grads), None
            )
            print(f"  layer-wise structures' batch ({name}): {b2} -> {-(-args.n // b2)} calls")
        bs = b2
    except (ImportError, AttributeError):  # a sigma before the structures sized their batches
        pass
    for b in plan.fast:
        print(f"  {b.layer.name:<12} {b.kind:<7} D={b.d_in:<6} C={b.d_out:<4} T={b.positions}")
    lik = sigma.likelihoods.get("classification")

    if "capture" in what:
        from sigma.structures.diag import Diag
        from sigma.structures.kfac import KFAC

        batches = [args.batch] if args.batch else sorted({bs, 64, 256})
        for b in batches:
            xb = tf.constant(x[:b])
            spec = [tf.TensorSpec([None, *x.shape[1:]], x.dtype)]

            def fwd(xb):
                return tf.reduce_sum(net(xb, training=False))

            def cap_only(xb):
                c = cap_mod.capture(net, plan, xb, likelihood=lik)
                return tf.add_n(  # an embedding's inputs are ids
                    [tf.cast(tf.reduce_sum(a), tf.float32) for a in c.acts]
                    + [tf.reduce_sum(s) for s in c.sens]
                )

            def kfac_stats(xb):
                c = cap_mod.capture(net, plan, xb, likelihood=lik)
                return KFAC._batch_stats(plan, c, max_block=2048, positions="expand")

            def diag_stats(xb):
                c = cap_mod.capture(net, plan, xb, likelihood=lik)
                return Diag._batch_stats(plan, c)

            def kfac_stats_no_dense_q(xb):  # Q of the 9,217-input Dense layer left out
                c = cap_mod.capture(net, plan, xb, likelihood=lik)
                out = KFAC._batch_stats(plan, c, max_block=2048, positions="expand")
                return [o for o in out if o.shape[0] is None or o.shape[0] < 5000]

            fns = {
                "forward": fwd, "capture (fwd + K bwd + patches)": cap_only,
                "capture + kfac sums": kfac_stats, "  same without the 9217² Q": kfac_stats_no_dense_q,
                "capture + diag sums": diag_stats,
            }  # fmt: skip
            print(f"per graph call, batch {b}:")
            for name, fn in fns.items():
                f = tf.function(fn, input_signature=spec, autograph=False)
                f(xb)
                t = med(
                    lambda f=f, xb=xb: tf.nest.map_structure(lambda v: v.numpy(), f(xb)),
                    args.repeats,
                )
                print(
                    f"  {name:<34} {t * 1e3:8.1f} ms  {t / b * 1e3:7.2f} ms/sample  "
                    f"x{t / b * args.n / unit:6.1f} passes over N"
                )
            # fetching a 9217² float32 sum to NumPy as float64 and adding (Accumulator.__call__)
            big = tf.random.normal((9217, 9217))
            total = np.zeros((9217, 9217))
            t = med(lambda t=total, o=big: np.add(t, o.numpy(), out=t), args.repeats)
            print(
                f"  Accumulator: one 9217² float32 sum added in place into a float64 total: {t * 1e3:.0f} ms"
            )
            del big, total

    if "fit" in what:
        from sigma.curvature import accumulate
        from sigma.structures import kfac as kfac_mod

        stamps = {}
        orig_call, orig_eigh = accumulate.Accumulator.__call__, kfac_mod.eigh

        def call(self, *a):
            t0 = time.perf_counter()
            out = orig_call(self, *a)
            stamps.setdefault("accumulate", []).append(time.perf_counter() - t0)
            stamps.setdefault("batches", []).append(
                len(self._batches) if hasattr(self._batches, "__len__") else -1
            )
            return out

        def eigh(m, *rest):
            t0 = time.perf_counter()
            out = orig_eigh(m, *rest)
            stamps.setdefault("eigh", []).append((m.shape[0], time.perf_counter() - t0))
            return out

        accumulate.Accumulator.__call__ = call
        kfac_mod.eigh = eigh
        for structure in ("kfac", "diag", "ekfac"):
            for run in ("first", "second")[: args.fit_runs]:
                stamps.clear()
                t0 = time.perf_counter()
                la = sigma.Laplace(net, x, y, likelihood="classification", structure=structure)
                total = time.perf_counter() - t0
                acc = sum(stamps.get("accumulate", []))
                eig = sum(t for _, t in stamps.get("eigh", []))
                print(
                    f"{structure} fit ({run}): {total:.2f} s = x{total / unit:.1f} passes; "
                    f"accumulate {acc:.2f} s over {stamps.get('batches')} batches; "
                    f"eigh {eig:.2f} s {[(n, round(t, 2)) for n, t in stamps.get('eigh', [])]}; "
                    f"rest {total - acc - eig:.2f} s"
                )
            if "predict" in what and structure in ("kfac", "diag"):
                unit_t = med(gradient_pass(net, xt, yt, 500), args.repeats)
                la.predict_proba(xt)
                t = med(lambda la=la: la.predict_proba(xt), args.repeats)
                print(
                    f"  {structure} predict_proba {args.test} pts: {t:.2f} s = x{t / unit_t:.1f} passes over them"
                )
        accumulate.Accumulator.__call__, kfac_mod.eigh = orig_call, orig_eigh

    if "eigh" in what:
        import scipy.linalg
        from threadpoolctl import threadpool_limits

        n = args.eigh_n
        a = np.random.default_rng(0).standard_normal((n, n + 100))
        m = a @ a.T / n
        del a
        cases = [("numpy eigh float64, 1 thread", lambda: np.linalg.eigh(m), 1)]
        cases += [("scipy evd float64, 2 threads", lambda: scipy.linalg.eigh(m, driver="evd"), 2)]
        m32 = m.astype(np.float32)
        cases += [("scipy evd float32, 1 thread", lambda: scipy.linalg.eigh(m32, driver="evd"), 1)]
        cases += [("scipy evd float32, 2 threads", lambda: scipy.linalg.eigh(m32, driver="evd"), 2)]
        cases += [("scipy evr float32, 2 threads", lambda: scipy.linalg.eigh(m32, driver="evr"), 2)]
        cases += [("tf.linalg.eigh float32", lambda: tf.linalg.eigh(tf.constant(m32)), 2)]
        for name, fn, threads in cases:
            with threadpool_limits(threads, user_api="blas"):
                t0 = time.perf_counter()
                fn()
                print(f"eigh {n}²: {name:<32} {time.perf_counter() - t0:7.1f} s", flush=True)


if __name__ == "__main__":
    main()
