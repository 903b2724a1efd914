"""What decides notebook 09's choice: the count of equivalent modes, and restarts (issue 29).

    .venv/bin/python bench/symmetry_count.py [--dataset friedman] [--splits 0,1,2,3,4]
        [--epochs 200] [--restarts 2] [--n-friedman 400] [--depths 0,1,2] [--full]

Trains notebook 09's candidates (homoscedastic and heteroscedastic × widths 10, 50 × depths
``--depths``, default 0, 1, 2, depth 0 a linear model; KFAC, one α per layer, α and β
re-estimated every 10 epochs) on each split with
``sigma.compare_models`` (``--restarts`` trainings per candidate from seeds split, split + 1,
…; each one's Laplace kept here) and re-ranks them by the one-mode Laplace evidence plus a
count of the modes that give the same function (:func:`sigma.selection.log_symmetry`):

* ``every``: every permutation and sign flip of a hidden layer's H units, ln H! + H ln 2
  (``resolution=None``);
* ``straight``: only those the posterior tells apart on the straight line between them (the
  default resolution, a squared Mahalanobis distance of 4: two copies closer than that are one
  mode of their mixture; ``paths=False``);
* ``distinct`` (sigma's): as ``straight``, and units also joined by the rotation that carries
  one into the other's place where the data term rises by at most 4/8 along it;
* ``none``: the evidence of one mode;
* ``full`` (with ``--full``): the evidence of the full Gauss–Newton posterior instead of
  KFAC's, at the same trained weights (α and β maximised from KFAC's; about 30 s for each
  50×2 network), plus the distinct count from its marginal variances: does the better
  curvature choose better?

For each count and for k = 1 … ``--restarts`` (the first k restarts, the one with the largest
evidence under that count representing each candidate, as ``compare_models(restarts=k)`` does
with its count), prints the regret (the held-out best candidate's test log-likelihood per
point minus the choice's, mean over the splits), the choice's margin over the fixed default
(homoscedastic 50×1, also the best of its k restarts), the choice's mean test log-likelihood,
the regret against the best of all trainings (not only the kept ones) and the margin over the
default trained once, and the choices; and, per data set, how much better on held-out data
the restart with the largest evidence is than the mean restart (the evidence choosing among
the modes of one network); and the floor of the regret, that of the one candidate which,
chosen in hindsight for every split, is closest to the held-out best (``floor``, with its
name): a selector that chooses per split beats it only by telling the splits apart. No
timing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sigma

import numpy as np  # noqa: E402

from sigma.selection import log_symmetry  # noqa: E402

COUNTS = {  # ln of the number of modes, from a fitted Laplace
    "every": lambda la: log_symmetry(la, resolution=None),
    "straight": lambda la: log_symmetry(la, paths=False),
    "distinct": lambda la: log_symmetry(la),
    "none": lambda la: 0.0,
}
DEFAULT = "homoscedastic 50×1"


def full_evidence(la, x, y) -> float:
    """ln p(y) of the full Gauss–Newton Laplace at ``la``'s trained weights (α, β maximised
    from ``la``'s), with the distinct count of modes."""
    from sigma import Laplace

    full = Laplace(la.model, x, y, structure="full", prior=la.prior.kind, alpha=la.alpha,
                   likelihood=la.likelihood)  # fmt: skip
    if la.likelihood.has_beta:
        full.beta = la.beta
    full.optimize_evidence(confidence_check=False)
    return float(full.log_evidence()) + log_symmetry(full)


def short(name: str) -> str:
    return name.replace("homoscedastic ", "ho ").replace("heteroscedastic ", "he ")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("friedman", "diabetes"), default="friedman")
    p.add_argument("--splits", default="0,1,2,3,4")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--n-friedman", type=int, default=400, help="Friedman #1 training samples")
    p.add_argument("--depths", default="0,1,2", help="hidden layers of the candidates (0: linear)")
    p.add_argument("--full", action="store_true", help="also rank by the full GGN's evidence")
    args = p.parse_args(argv)

    from sigma import compare_models
    from sigma.lab import data, occam

    depths = [int(v) for v in args.depths.split(",")]
    rows = []
    for s in (int(v) for v in args.splits.split(",")):
        split = (
            data.diabetes_split(seed=s)
            if args.dataset == "diabetes"
            else data.friedman_regression(args.n_friedman, 1000, noise=1.0, seed=s)
        )
        builders = occam.candidates(
            split.x_train.shape[1], len(split.x_train), widths=[10, 50], depths=depths,
            epochs=args.epochs, batch_size=32, learning_rate=0.05,
            default=("homoscedastic", 50, 1),
        )  # fmt: skip
        for r in range(args.restarts):  # restart r is compare_models' seed s + r
            result = compare_models(
                builders, split.x_train, split.y_train, epochs=args.epochs, batch_size=32,
                seed=s + r, verbose=0, structure="kfac", prior="layer", every=10,
            )  # fmt: skip
            for row in result.table:
                la = result.laplaces[row["name"]]
                one_mode = row["log_evidence"] - row["symmetry"]
                scores = {c: one_mode + count(la) for c, count in COUNTS.items()}
                if args.full:
                    scores["full"] = full_evidence(la, split.x_train, split.y_train)
                rows.append(
                    {
                        "split": s, "restart": r, "name": row["name"],
                        "test": occam.test_loglik(la, split.x_test, split.y_test, split.y_scale),
                        **scores,
                    }
                )  # fmt: skip
            print(f"split {s}, restart {r} trained", flush=True)

    print(f"\n{args.dataset}" + (f" (N = {args.n_friedman})" if args.dataset == "friedman" else "")
          + f", {args.epochs} epochs, splits {args.splits}, depths {args.depths}")  # fmt: skip
    print(f"{'count':10} {'k':>2} {'regret':>8} {'− default':>10} {'chosen':>8} {'regret*':>8} "
          f"{'− default*':>10} {'floor':>6} {'fixed':>8}  choices")  # fmt: skip
    for c in list(COUNTS) + (["full"] if args.full else []):
        for k in range(1, args.restarts + 1):
            scored, regrets_all, margins_once = [], [], []  # scored: occam.summary's rows
            for s in dict.fromkeys(r["split"] for r in rows):
                these = [r for r in rows if r["split"] == s and r["restart"] < k]
                kept = {}  # each candidate's restart with the largest evidence (this count's)
                for r in these:
                    if r["name"] not in kept or r[c] > kept[r["name"]][c]:
                        kept[r["name"]] = r
                pick = max(kept.values(), key=lambda r, c=c: r[c])
                scored += [
                    {"dataset": args.dataset, "split": s, "candidate": r["name"],
                     "test_loglik": r["test"], "chosen": r is pick}
                    for r in kept.values()
                ]  # fmt: skip
                regrets_all.append(max(r["test"] for r in these) - pick["test"])
                once = next(r for r in these if r["name"] == DEFAULT and r["restart"] == 0)
                margins_once.append(pick["test"] - once["test"])
            got = occam.summary(scored, DEFAULT)[args.dataset]
            print(f"{c:10} {k:2d} {got['regret']:8.4f} {got['chosen_minus_default']:+10.4f} "
                  f"{got['chosen_test_loglik']:8.4f} {np.mean(regrets_all):8.4f} "
                  f"{np.mean(margins_once):+10.4f} {got['fixed_regret']:6.4f} "
                  f"{short(got['best_fixed']):>8}  {', '.join(map(short, got['choices']))}")  # fmt: skip
    print("regret, − default: against the candidates as kept (each its best-evidence restart), "
          "as notebook 09 reports;\nregret*: against the best of all trainings; − default*: "
          "against the default trained once (seed = split);\nfloor: the regret of the one "
          "candidate (fixed) closest to the held-out best on average, chosen in hindsight")  # fmt: skip
    if args.full:
        print("\nthe full GGN's evidence minus KFAC's (both with the distinct count), nats, "
              "mean over the trainings:")  # fmt: skip
        for name in dict.fromkeys(r["name"] for r in rows):
            gap = [r["full"] - r["distinct"] for r in rows if r["name"] == name]
            print(
                f"  {short(name):8} {np.mean(gap):+8.1f}  (min {min(gap):+.1f}, max {max(gap):+.1f})"
            )
    if args.restarts > 1:
        gains = []
        for s in dict.fromkeys(r["split"] for r in rows):
            for name in dict.fromkeys(r["name"] for r in rows):
                these = [r for r in rows if r["split"] == s and r["name"] == name]
                top = max(these, key=lambda r: r["distinct"])
                gains.append(top["test"] - np.mean([r["test"] for r in these]))
        print(f"\nthe restart with the largest evidence against the mean of {args.restarts}: "
              f"{np.mean(gains):+.4f} nats per point on held-out data "
              f"(mean of {len(gains)} candidates × splits)")  # fmt: skip


if __name__ == "__main__":
    main()
