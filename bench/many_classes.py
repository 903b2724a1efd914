"""Thousands of classes on the last layer (issue 26.4): a 128 → 5,000-logit head, last-layer
kfac with the Monte-Carlo GGN, the predictive for 1,000 inputs.

    .venv/bin/python bench/many_classes.py [--classes 5000] [--n 2000] [--test 1000] [--repeats 3]

The network: 32 inputs → Dense 128 (ReLU) → Dense K logits, seeded, untrained; data generated
here. With last-layer kfac the predictive covariance of the logits is (φᵀ V φ)·U per input (φ the
128 features, V and U the Kronecker factors' inverses), so no (K, P) Jacobian is formed. Prints
the fit time, the median predictive time and the resident memory the predictive adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import PeakRSS  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=5000)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import keras

    import sigma

    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(args.classes),
        ]
    )
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(args.n, 32)).astype("f4")
    y = rng.integers(0, args.classes, args.n)
    xt = rng.normal(size=(args.test, 32)).astype("f4")
    t0 = time.perf_counter()
    la = sigma.Laplace(model, x, y, likelihood="classification", weights="last_layer",
                       structure="kfac", curvature="ggn_mc", seed=args.seed)  # fmt: skip
    fit = time.perf_counter() - t0
    la.predict_proba(xt[:10])  # traces
    times = []
    with PeakRSS() as mem:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            probs = la.predict_proba(xt)
            times.append(time.perf_counter() - t0)
    assert probs.shape == (args.test, args.classes) and np.all(np.isfinite(probs))
    print(
        f"{args.classes:,} classes, last-layer kfac (ggn_mc), N = {args.n:,}: fit {fit:.2f} s "
        f"(tracing included); predict_proba for {args.test:,} inputs: median {statistics.median(times):.3f} s "
        f"(runs {', '.join(f'{t:.3f}' for t in times)}), resident memory added "
        f"{mem.bytes / 1e6:.0f} MB ({mem.bytes / args.test / 1e3:.0f} kB per input; the "
        f"probabilities alone are {probs.nbytes / args.test / 1e3:.0f} kB per input)"
    )


if __name__ == "__main__":
    main()
