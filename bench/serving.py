"""Serving σ: the cost of a SavedModel that carries the error bars, against the model alone.

    .venv/bin/python bench/serving.py [--n 2000] [--test 1000] [--repeats 7]

A 784-256-256-10 relu MLP (P = 269,322, float32) trained for one epoch on synthetic regression
data (generated from --seed, no download). For the diag and kfac structures it exports
``Laplace.to_keras()`` as a SavedModel and times its ``serve`` signature on a batch of --test
points, next to the original model's own ``predict`` and its own exported ``serve`` on the
same batch; medians of --repeats warm calls, all in this process. The issue's target: the
σ-carrying ``serve`` within 3× the model's own predict time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sigma

import numpy as np  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm: traces and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="training samples")
    parser.add_argument("--test", type=int, default=1000, help="points per served batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import sigma
    from sigma.lab.data import teacher_regression

    x, x_test, y, _ = teacher_regression(args.n, args.test, seed=args.seed)
    x, x_test, y = (a.astype(np.float32) for a in (x, x_test, y))
    model = sigma.lab.mlp(784, (256, 256), 10, activation="relu", dtype="float32", seed=args.seed)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, epochs=1, batch_size=128, verbose=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model.export(Path(tmp) / "plain", verbose=False)
        plain = tf.saved_model.load(str(Path(tmp) / "plain"))
        t_predict = timed(
            lambda: model.predict(x_test, batch_size=args.test, verbose=0), args.repeats
        )
        t_plain = timed(lambda: plain.serve(x_test), args.repeats)
        for structure in ("diag", "kfac"):
            la = sigma.Laplace(model, x, y, structure=structure).optimize_evidence()
            path = Path(tmp) / structure
            la.to_keras().export(path, verbose=False)
            served = tf.saved_model.load(str(path))
            t_served = timed(lambda s=served: s.serve(x_test), args.repeats)
            std = np.asarray(served.serve(x_test)["std"])
            ref = la.predict(x_test)[1]
            rows.append((structure, t_served, float(np.max(np.abs(std / ref - 1)))))
    print(
        f"MLP 784-256-256-10 (P = {sigma.num_params(model):,}), float32, a batch of "
        f"{args.test:,} points, median of {args.repeats} warm calls"
    )
    print(f"model.predict: {t_predict:.4f} s   model's own SavedModel serve: {t_plain:.4f} s")
    print(
        f"{'structure':<10} {'serve σ s':>10} {'× predict':>10} {'× own serve':>12} {'max |σ/predict − 1|':>20}"
    )
    for structure, t, err in rows:
        print(f"{structure:<10} {t:10.4f} {t / t_predict:10.2f} {t / t_plain:12.2f} {err:20.2e}")


if __name__ == "__main__":
    main()
