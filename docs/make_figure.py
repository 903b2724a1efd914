"""Draw the README figure: σ on Iris test points, α and β chosen by the evidence.

    .venv/bin/python docs/make_figure.py   (or `make figure`)  ->  docs/iris_sigma.png
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import sigma  # noqa: E402

x_train, x_test, y_train, y_test = sigma.iris_split(seed=0)
model = sigma.mlp(4, 4, 3, activation="sigmoid", seed=0)
sigma.train(model, x_train, y_train, epochs=20, batch_size=1, seed=0)
la = sigma.Laplace(model, x_train, y_train).optimize_evidence()
mean, std = la.predict(x_test)
fig = sigma.plots.prediction_bands(
    mean,
    std,
    y_test,
    names=list(sigma.data.IRIS_CLASSES),
    title=f"Iris, 4-4-3 network: prediction ± 2σ (α = {la.alpha:.3g}, β = {la.beta:.3g} by evidence)",
)
out = Path(__file__).with_name("iris_sigma.png")
fig.savefig(out, dpi=90)
print(f"wrote {out} ({out.stat().st_size // 1024} kB); {la}")
