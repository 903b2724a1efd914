"""Draw the README figures, α and β chosen by the evidence in both.

    .venv/bin/python docs/make_figure.py   (or `make figure`)
        ->  docs/regression_sigma.png   1-D regression with a gap: prediction ± 2σ
        ->  docs/iris_sigma.png         σ on Iris test points

    .venv/bin/python docs/make_figure.py regression   (only one of them)

Everything is seeded; two runs draw the same figures.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sigma  # noqa: E402

HERE = Path(__file__).parent
tf.get_logger().setLevel("ERROR")  # Laplace is built several times: retracing notices


def _save(fig, name: str, dpi: int) -> Path:
    out = HERE / name
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


# -- 1-D regression with a gap in the data ------------------------------------------------------
N_DATA = 100
NOISE = 0.3  # standard deviation of the noise on the targets
INTERVALS = ((-4.0, -1.0), (1.5, 4.0))  # the data; nothing in between or beyond
STEPS = 2000  # full-batch Adam steps per training round
ROUNDS = 4  # MacKay's loop: train at the current α, β, then re-estimate them


def truth(x):
    return x * np.sin(x)


def regression_data(seed: int = 0):
    """N_DATA points, half on each interval, t = x sin x + noise; shapes (N, 1)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(lo, hi, N_DATA // 2) for lo, hi in INTERVALS])[:, None]
    t = truth(x) + NOISE * rng.normal(size=x.shape)
    return x, t


def regression_mlp(seed: int = 0):
    """1 → 32 → 32 → 1, tanh, float64: P = 1,153 weights."""
    keras.utils.set_random_seed(seed)
    dense = dict(activation="tanh", dtype="float64")
    return keras.Sequential(
        [
            keras.Input((1,), dtype="float64"),
            keras.layers.Dense(32, **dense),
            keras.layers.Dense(32, **dense),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )


def train_for_the_posterior(model, x, t):
    """Fit, then MacKay's loop: the Laplace approximation belongs at w_MP, the minimum of
    M(w) = β E_D + α E_W. In Keras' mean-loss scale M · 2/(β N K) = mean (f − t)² + λ ‖w‖² with
    λ = α/(β N K) (docs/math.md, "Training for the posterior"). The first round has λ = 0 (plain
    least squares); each later one trains at the α, β the evidence chose after the previous one.
    Returns the final ``sigma.Laplace`` with α, β at the evidence's fixed point."""
    n_obs = t.size
    optimizer = keras.optimizers.Adam(0.01)
    penalty = tf.Variable(0.0, dtype=tf.float64)  # λ
    xt, tt = tf.constant(x), tf.constant(t)
    weights = model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            mse = tf.reduce_mean((model(xt) - tt) ** 2)
            loss = mse + penalty * tf.add_n([tf.reduce_sum(w**2) for w in weights])
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))

    alpha, beta = 1.0, 1.0
    for _ in range(ROUNDS + 1):
        for _ in range(STEPS):
            step()
        la = sigma.Laplace(model, x, t, structure="full", alpha=alpha, beta=beta)
        la.optimize_evidence()
        alpha, beta = la.alpha, la.beta
        print(f"  {la}  γ = {la.gamma:.1f}, ln evidence = {la.log_evidence():.2f}")
        penalty.assign(alpha / (beta * n_obs))
    return la


def regression_figure(seed: int = 0) -> Path:
    x, t = regression_data(seed)
    model = regression_mlp(seed)
    la = train_for_the_posterior(model, x, t)
    grid = np.linspace(-6.5, 6.5, 400)[:, None]
    mean, std_w = la.predict(grid, noise=False)  # weight uncertainty only: gᵀA⁻¹g
    _, std = la.predict(grid)  # total: 1/β + gᵀA⁻¹g
    m, s_w, s = mean[:, 0], std_w[:, 0], std[:, 0]
    g = grid[:, 0]

    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    ax.fill_between(g, m - 2 * s, m + 2 * s, color="C0", alpha=0.18, lw=0,
                    label="± 2σ total (weights + noise 1/β)")  # fmt: skip
    ax.fill_between(g, m - 2 * s_w, m + 2 * s_w, color="C0", alpha=0.40, lw=0,
                    label="± 2σ weights only (gᵀA⁻¹g)")  # fmt: skip
    ax.plot(g, truth(g), color="0.35", lw=1, ls="--", label="x sin x (truth)")
    ax.plot(g, m, color="C0", lw=1.8, label="network prediction")
    ax.plot(x[:, 0], t[:, 0], "o", color="k", ms=3, label=f"{len(x)} training points")
    (lo1, hi1), (lo2, hi2) = INTERVALS
    ax.axvspan(hi1, lo2, color="0.5", alpha=0.08, lw=0)
    ax.text((hi1 + lo2) / 2, -6.6, "no data", ha="center", va="bottom", fontsize=9, color="0.35")
    ax.set_xlim(g[0], g[-1])
    ax.set_ylim(-7, 7.5)
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.set_title(
        f"Evidence: α = {la.alpha:.3g}, β = {la.beta:.3g}, noise σ = 1/√β = {la.beta**-0.5:.3f} "
        f"(true {NOISE:g}); γ = {la.gamma:.1f} of P = {la.n_params:,} weights",
        fontsize=9.5,
    )
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.075, 1, 1))
    return _save(fig, "regression_sigma.png", dpi=110)


# -- Iris: the original notebook's network ------------------------------------------------------
def iris_figure() -> Path:
    x_train, x_test, y_train, y_test = sigma.lab.iris_split(seed=0)
    model = sigma.lab.mlp(4, 4, 3, activation="sigmoid", seed=0)
    sigma.lab.train(model, x_train, y_train, epochs=20, batch_size=1, seed=0)
    la = sigma.Laplace(model, x_train, y_train).optimize_evidence()
    print(f"  {la}")
    mean, std = la.predict(x_test)
    fig = sigma.lab.plots.prediction_bands(
        mean,
        std,
        y_test,
        names=list(sigma.lab.IRIS_CLASSES),
        title=f"Iris, 4-4-3 network: prediction ± 2σ (α = {la.alpha:.3g}, β = {la.beta:.3g} by evidence)",
    )
    return _save(fig, "iris_sigma.png", dpi=90)


FIGURES = {"regression": regression_figure, "iris": iris_figure}

if __name__ == "__main__":
    for name in sys.argv[1:] or FIGURES:
        if name not in FIGURES:
            sys.exit(f"unknown figure {name!r}; choose from {sorted(FIGURES)}")
        print(name)
        out = FIGURES[name]()
        print(f"  wrote {out} ({out.stat().st_size // 1024} kB)")
