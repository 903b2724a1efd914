"""The README's classifier lines against the network's own softmax (issue 27), per seed.

    .venv/bin/python bench/classifier_softmax_gap.py [--seeds 0,1,2,3,4] [--scales 1,10,100,1e4]
        [--model mlp|cnn]

The data and the MLP are those of tests/test_classifier_tuning.py (digits 0–4 split fit /
validation / test, 5–9 as out-of-distribution inputs; 64-32-5 trained for 20 epochs);
``--model cnn``: the same split as 8×8 images and a small CNN in its place (Conv2D 16 3×3
ReLU, 2×2 max pooling, Dense 5; Adam 1e-2, 20 epochs) — issue 27's second case. For
each seed: what ``optimize_prior(x_val, y_val)`` found (T, the factor c of the evidence's α_g,
edges of the search), then the validation and test NLL (7 digits) and the AUROC of digits
5–9 against the test digits (by the largest probability) of the softmax, of the README's
lines, and of the evidence's α_g at that T times each of ``--scales`` — where the held-out
NLL falls towards the softmax's as the factor grows, the held-out data prefer the network's
own probabilities to the posterior's spread. No timing.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--scales", default="1,10,100,1e4")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    from test_classifier_tuning import _digits

    import sigma
    from sigma import metrics

    def score(p):
        return -p.max(axis=1)

    for seed in (int(s) for s in args.seeds.split(",")):
        x_fit, x_val, x_test, y_fit, y_val, y_test, x_ood, model = _digits(seed=seed)
        if args.model == "cnn":
            x_fit, x_val, x_test, x_ood = (
                z.reshape(-1, 8, 8, 1).astype("float32") for z in (x_fit, x_val, x_test, x_ood)
            )
            model = _cnn(x_fit, y_fit, seed)
        la = sigma.Laplace(model, x_fit, y_fit, likelihood="classification", structure="kfac",
                           prior="layer", progress=False)  # fmt: skip
        la.optimize_prior(x_val, y_val)  # the README's lines
        found = la.prior_result
        print(f"seed {seed}: T = {la.temperature:.3g}, α factor c = {found['alpha_factor']:.4g}, "
              f"at_bound {found['at_bound']}")  # fmt: skip

        def softmax(x, model=model):
            return sigma.classification.softmax(model(x).numpy().astype(np.float64))

        tuned = np.array(la.alpha, np.float64)
        evidence = tuned / found["alpha_factor"]

        def at(factor, la=la, evidence=evidence):
            def probabilities(x):
                la.alpha = evidence * factor
                return la.predict_proba(x)

            return probabilities

        rows = [("softmax", softmax), ("README lines", at(found["alpha_factor"]))]
        rows += [(f"evidence α × {c:g}", at(c)) for c in map(float, args.scales.split(","))]
        for name, fn in rows:
            print(
                f"  {name:<18} validation NLL {metrics.nll(fn(x_val), y_val):.7f}  test NLL "
                f"{metrics.nll(fn(x_test), y_test):.7f}  OOD AUROC "
                f"{metrics.auroc(score(fn(x_test)), score(fn(x_ood))):.6f}"
            )
        la.alpha = tuned


def _cnn(x, labels, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(5),
    ])  # fmt: skip
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    model.fit(x, labels, epochs=20, batch_size=32, verbose=0)
    return model


if __name__ == "__main__":
    main()
