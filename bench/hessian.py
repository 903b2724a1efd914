"""Nested-tape Hessian (vectorised, traced once) against the original notebook's approach.

The original built the Hessian one row at a time: one backward pass through the gradient per
weight (``K.gradients(gradients[n], weights)`` for n in range(P)). Here that baseline is the
same loop over a row function traced once; ``sigma.hessian`` differentiates all P gradient
components at once with ``GradientTape.jacobian`` (pfor) inside one ``tf.function``.

    .venv/bin/python bench/hessian.py [--repeats 3] [--sizes 35,500,5000]

Prints a table: P, time of each (median of --repeats runs, both in this process), speed-up,
and the largest relative difference between the two Hessians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sigma  # noqa: E402

# hidden widths giving P ≈ 35, ~500 and ~5,000 on 4 inputs and 3 outputs
HIDDEN = {35: (4,), 500: (20, 16), 5000: (64, 64)}


def rowwise_hessian(model, x, y) -> np.ndarray:
    """The original approach: one backward pass through the gradient per weight.

    Like the original's graph-mode ``K.gradients`` per row, but fairer to it: the row function
    is traced once (the row index is a tensor input) and called P times.
    """
    variables = model.trainable_variables
    x, y = tf.constant(x), tf.constant(y)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def row(n):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                e = 0.5 * tf.reduce_sum(tf.square(model(x, training=False) - y))
            g = tf.concat([tf.reshape(t, [-1]) for t in inner.gradient(e, variables)], 0)
            g_n = g[n]
        return tf.concat([tf.reshape(t, [-1]) for t in outer.gradient(g_n, variables)], 0)

    return np.stack([row(tf.constant(n)).numpy() for n in range(sigma.num_params(model))])


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="35,500,5000", help="comma-separated among 35,500,5000")
    parser.add_argument("--n", type=int, default=100, help="training samples (Iris-sized)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, 4)).astype("float32")
    y = rng.normal(size=(args.n, 3)).astype("float32")
    print(f"N = {args.n}, float32, median of {args.repeats} runs, {os.cpu_count()} cores")
    print(
        f"{'P':>6} {'hidden':>10} {'row-wise (s)':>13} {'sigma.hessian (s)':>18} {'speed-up':>9} {'max rel diff':>13}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        model = sigma.mlp(4, HIDDEN[size], 3, activation="sigmoid", seed=0)
        t_vec, h_vec = median_time(lambda m=model: sigma.hessian(m, x, y), args.repeats)
        t_row, h_row = median_time(lambda m=model: rowwise_hessian(m, x, y), args.repeats)
        rel = np.abs(h_vec - h_row).max() / np.abs(h_row).max()
        print(
            f"{sigma.num_params(model):>6} {str(HIDDEN[size]):>10} {t_row:>13.3f} "
            f"{t_vec:>18.3f} {t_row / t_vec:>8.1f}x {rel:>13.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
