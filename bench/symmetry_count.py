"""What decides notebook 09's choice on Friedman #1: the count of equivalent modes (issue 29).

    .venv/bin/python bench/symmetry_count.py [--dataset friedman] [--splits 0,1,2,3,4]
        [--epochs 60]

Trains notebook 09's candidates (homoscedastic and heteroscedastic × widths 10, 50 × depths
1, 2; KFAC, one α per layer, α and β re-estimated every 10 epochs) on each split with
``sigma.compare_models`` and re-ranks them by the Laplace evidence plus three counts of the
modes that give the same function:

* ``H! 2^H``: every permutation and sign flip of a hidden layer's H units (what
  :func:`sigma.selection.log_symmetry` counts);
* ``distinct``: only the units the data determine are told apart — h = Σ_u min(1, γ_u), γ_u
  = Σ (1 − α_i Σ_ii) over the unit's incoming weights, bias and outgoing weights, and
  ln(H!/(H − h)!) + h ln 2: permuting units the prior alone describes gives the same mode;
* ``none``: the evidence of one mode.

Prints per split the evidence's choice under each count and, per count, the regret (the
held-out best's test log-likelihood per point minus the choice's, mean over the splits) and
the choice's margin over the fixed default (homoscedastic 50×1). No timing.
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
from scipy.special import gammaln  # noqa: E402

COUNTS = ("H! 2^H", "distinct", "none")
DEFAULT = "homoscedastic 50×1"


def unit_gammas(la) -> list[tuple[int, bool, np.ndarray]]:
    """(H, odd activation, γ_u per unit) of every hidden layer ``log_symmetry`` counts."""
    from sigma.selection import _hidden_units

    post = la.posterior
    structure, b = post.operator()
    alpha = np.broadcast_to(np.asarray(post.alpha_weights(), np.float64), (post.n_params,))
    g = 1.0 - alpha * np.asarray(structure.inverse_diagonal(post.alpha_weights(), b))
    tv = la.model.trainable_variables
    chunks, offset = {}, 0
    for (i, _), size in zip(post.selection.parts, post.selection.sizes, strict=True):
        chunks[tv[i].path] = g[offset : offset + size].reshape(tv[i].shape)
        offset += size
    kernels = [v.path for v in tv if v.path.endswith("kernel")]
    out = []
    for name, h, odd in _hidden_units(la.model):
        k = next(p for p in kernels if p.split("/")[-2] == name)
        following = kernels[kernels.index(k) + 1]  # the MLP's next Dense layer
        g_u = chunks[k].sum(0) + chunks[k.replace("kernel", "bias")] + chunks[following].sum(1)
        out.append((h, odd, g_u))
    return out


def log_modes(layers, count: str) -> float:
    total = 0.0
    for h_all, odd, g_u in layers:
        h = {"H! 2^H": float(h_all), "none": 0.0}.get(count, float(np.minimum(1.0, g_u).sum()))
        total += gammaln(h_all + 1.0) - gammaln(h_all - h + 1.0) + (h * np.log(2.0) if odd else 0)
    return total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("friedman", "diabetes"), default="friedman")
    p.add_argument("--splits", default="0,1,2,3,4")
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args(argv)

    from sigma import compare_models
    from sigma.lab import data, occam

    rows = []
    for s in (int(v) for v in args.splits.split(",")):
        split = (
            data.diabetes_split(seed=s)
            if args.dataset == "diabetes"
            else data.friedman_regression(400, 1000, noise=1.0, seed=s)
        )
        builders = occam.candidates(
            split.x_train.shape[1], len(split.x_train), widths=[10, 50], depths=[1, 2],
            epochs=args.epochs, batch_size=32, learning_rate=0.05,
            default=("homoscedastic", 50, 1),
        )  # fmt: skip
        result = compare_models(
            builders, split.x_train, split.y_train, epochs=args.epochs, batch_size=32, seed=s,
            verbose=0, structure="kfac", prior="layer", every=10,
        )  # fmt: skip
        for row in result.table:
            la = result.laplaces[row["name"]]
            layers = unit_gammas(la)
            one_mode = row["log_evidence"] - row["symmetry"]
            rows.append(
                {
                    "split": s, "name": row["name"],
                    "test": occam.test_loglik(la, split.x_test, split.y_test, split.y_scale),
                    **{c: one_mode + log_modes(layers, c) for c in COUNTS},
                }
            )  # fmt: skip
        these = [r for r in rows if r["split"] == s]
        picks = {c: max(these, key=lambda r, c=c: r[c])["name"] for c in COUNTS}
        print(f"split {s}: " + "; ".join(f"{c} → {n}" for c, n in picks.items()), flush=True)

    print(f"\n{args.dataset}, {args.epochs} epochs, splits {args.splits}")
    print(f"{'count':10} {'regret':>8} {'− default':>10}  choices")
    for c in COUNTS:
        regrets, margins, names = [], [], []
        for s in dict.fromkeys(r["split"] for r in rows):
            these = [r for r in rows if r["split"] == s]
            pick = max(these, key=lambda r, c=c: r[c])
            best = max(r["test"] for r in these)
            default = next(r for r in these if r["name"] == DEFAULT)
            regrets.append(best - pick["test"])
            margins.append(pick["test"] - default["test"])
            names.append(pick["name"].replace("homoscedastic ", "ho ").replace(
                "heteroscedastic ", "he "))  # fmt: skip
        print(f"{c:10} {np.mean(regrets):8.4f} {np.mean(margins):+10.4f}  {', '.join(names)}")


if __name__ == "__main__":
    main()
