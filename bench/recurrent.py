"""Recurrent models: a Laplace fit, its evidence and a predictive, with sigma looping over the
samples from the start against trying TensorFlow's pfor first in every graph (the behaviour
before sigma knew that a ``while`` loop's gradient never converts), in one process.

    .venv/bin/python bench/recurrent.py [--n 40] [--repeats 3] [--structure kfac]

Each run builds a fresh model (tests/test_vectorize.py's: Input (5, 3) → layer → Dense 2, float64, seeded), so each pays its
graphs' tracing — what a user meets on the first fit of a model. Prints the median seconds of
``Laplace(model, x, y)`` + ``optimize_evidence()`` + ``predict(x[:5])`` per layer and path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from test_vectorize import recurrent  # noqa: E402

KINDS = ("SimpleRNN", "GRU", "LSTM", "Bidirectional")


def one_run(kind: str, structure: str, n: int, seed: int) -> float:
    import sigma

    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 5, 3)), rng.normal(size=(n, 2))
    model = recurrent(kind, seed)  # the recurrent models of tests/test_vectorize.py
    start = time.perf_counter()
    la = sigma.Laplace(model, x, y, structure=structure, progress=False)
    la.optimize_evidence()
    la.predict(x[:5])
    return time.perf_counter() - start


def pfor_first():
    """The old path: pfor tried in every graph, its failure not remembered."""
    from sigma import keras_compat
    from sigma.curvature import vectorize

    real = vectorize.per_sample

    def forgetful(fn, elems, signature, *, memo=None):
        return real(fn, elems, signature, memo=None)

    return [
        mock.patch.object(keras_compat, "runs_time_loops", lambda model: False),
        mock.patch.object(vectorize, "per_sample", forgetful),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--structure", default="kfac")
    args = p.parse_args()
    rows = []
    for kind in KINDS:
        times = {"loop from the start": [], "pfor tried first": []}
        for r in range(args.repeats):  # alternate the paths: drift hits both alike
            times["loop from the start"].append(one_run(kind, args.structure, args.n, r))
            patches = pfor_first()
            for patch in patches:
                patch.start()
            try:
                times["pfor tried first"].append(one_run(kind, args.structure, args.n, r))
            finally:
                for patch in patches:
                    patch.stop()
        rows.append((kind, {k: statistics.median(v) for k, v in times.items()}))
    print(
        f"recurrent models, structure={args.structure!r}, N = {args.n}: Laplace + "
        f"optimize_evidence + predict(5), fresh model each run, median of {args.repeats} (s)"
    )
    print(f"{'layer':<14} {'loop from the start':>20} {'pfor tried first':>17} {'ratio':>6}")
    for kind, t in rows:
        new, old = t["loop from the start"], t["pfor tried first"]
        print(f"{kind:<14} {new:>20.2f} {old:>17.2f} {old / new:>6.1f}")


if __name__ == "__main__":
    main()
