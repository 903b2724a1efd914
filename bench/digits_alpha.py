"""Why the evidence-trained Laplace is under-confident on the digits: the evidence's α against
the α the held-out NLL prefers.

    .venv/bin/python bench/digits_alpha.py [--seed 0] [--epochs 100]

The digits MLP of notebook 05 (64-32-10 tanh, cross-entropy on logits) trained with
``sigma.EvidenceCallback`` (last_layer structure, one α per layer) on 75% of the training
images. Prints the re-estimations during training, then for the final Laplace a scan over α:
the log evidence and the test NLL and ECE of the probit predictive, next to the network's own
softmax. No timing: a table of what the evidence chooses and what it costs in calibration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sigma


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args(argv)

    from sklearn.model_selection import train_test_split

    from sigma import metrics
    from sigma.callbacks import EvidenceCallback
    from sigma.classification import softmax
    from sigma.lab import baselines, data
    from sigma.lab.models import Recipe, train

    x_train, x_test, l_train, l_test = data.digits_split(seed=args.seed)
    x_fit, _, l_fit, _ = train_test_split(
        x_train, l_train, test_size=0.25, random_state=args.seed, stratify=l_train
    )
    recipe = Recipe(
        hidden=(32,), epochs=args.epochs, structure="last_layer", prior="layer", batch_size=32,
        learning_rate=0.003, schedule="cosine", every=10,
    )  # fmt: skip
    loss = baselines.classification_loss()
    model = recipe.network(x_fit.shape[1], 10, args.seed)
    cb = EvidenceCallback(x_fit, l_fit, structure=recipe.structure, prior="layer",
                          every=recipe.every, verbose=0)  # fmt: skip
    train(model, x_fit, l_fit, loss=loss, seed=args.seed, callbacks=[cb], **recipe.training())
    print("re-estimations during training (last_layer, one α):")
    print(f"{'epoch':>6} {'alpha':>8} {'gamma':>7} {'ln evidence':>12}")
    for h in cb.history:
        print(f"{h['epoch']:6d} {h['alpha']:8.4g} {h['gamma']:7.1f} {h['log_evidence']:12.1f}")
    own = metrics.classification_metrics(softmax(baselines.model_outputs(model, x_test)), l_test)
    la = cb.laplace
    best = la.alpha
    print(f"\nthe final Laplace (P = {la.n_params}, N = {la.n_data}), test digits:")
    print(f"{'alpha':>10} {'ln evidence':>12} {'test NLL':>9} {'test ECE':>9}")
    for alpha in sorted({best, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0}):
        la.alpha = alpha
        scores = metrics.classification_metrics(la.predict_proba(x_test), l_test)
        mark = "  <- evidence" if alpha == best else ""
        print(
            f"{alpha:10.4g} {la.log_evidence():12.1f} {scores['nll']:9.4f} {scores['ece']:9.4f}"
            f"{mark}"
        )
    print(f"{'softmax':>10} {'':>12} {own['nll']:9.4f} {own['ece']:9.4f}  (no weight uncertainty)")


if __name__ == "__main__":
    main()
