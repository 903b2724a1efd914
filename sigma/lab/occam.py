"""The evidence chooses the model, measured on held-out data (``notebooks/09_model_selection.py``).

For every candidate MLP — homoscedastic (squared error, one noise precision β) or
heteroscedastic (:class:`sigma.losses.GaussianNLL`), of several widths and depths —
:func:`run_split` trains it with :func:`sigma.compare_models` on one training set (``restarts``
times, the training with the largest evidence kept) and records its log evidence (with the
data fit, the Occam factor and the symmetry term) and its test log-likelihood per point.
:func:`summary` says, per data set, how often the evidence's choice is the held-out best, how
far behind it is when it is not, and how it does against a fixed default network.

Per-point values are in the targets' original units: a density of the standardised targets is
the original one times ``y_scale``, so ln p per point in the original units is the
standardised one minus ln ``y_scale`` (for the evidence and the test log-likelihood alike).
"""

from __future__ import annotations

import itertools
import warnings

import keras
import numpy as np

from sigma import metrics
from sigma.lab.models import mlp
from sigma.losses import GaussianNLL
from sigma.selection import compare_models

KINDS = ("homoscedastic", "heteroscedastic")


def name(kind: str, width: int, depth: int) -> str:
    """A candidate's name, e.g. ``"homoscedastic 50×1"`` (width × hidden layers), or
    ``"homoscedastic linear"`` for no hidden layer (depth 0, any width)."""
    return f"{kind} linear" if int(depth) == 0 else f"{kind} {int(width)}×{int(depth)}"


def parse(candidate: str) -> tuple[str, int, int]:
    """(kind, width, depth) of a :func:`name`; a linear model's width is 0."""
    kind, size = candidate.split(" ")
    if size == "linear":
        return kind, 0, 0
    width, depth = (int(v) for v in size.split("×"))
    return kind, width, depth


def builder(kind: str, n_inputs: int, width: int, depth: int, *, learning_rate: float,
            steps: int, steps_per_epoch: int = 1, activation: str = "tanh",
            dtype: str = "float32"):  # fmt: skip
    """A zero-argument builder of a compiled MLP ``n_inputs → width (× depth) → outputs``
    (:func:`sigma.lab.models.mlp`; depth 0: a linear model, ``width`` ignored):
    one output on the squared error (homoscedastic) or two, [μ | ln σ²], on the Gaussian NLL
    (heteroscedastic). Adam with a cosine decay over ``steps`` steps to 1% of
    ``learning_rate``; one compiled call per epoch of ``steps_per_epoch`` steps."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if int(depth) < 0 or (int(depth) > 0 and int(width) < 1):
        raise ValueError(
            f"depth must be at least 0 and width at least 1 (with hidden layers), got width "
            f"{width}, depth {depth}"
        )

    def build():  # compare_models seeds Keras before each build: seed=None keeps that
        model = mlp(n_inputs, (int(width),) * int(depth), 1 if kind == "homoscedastic" else 2,
                    activation=activation, dtype=dtype, seed=None)  # fmt: skip
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.01)
        loss = "mse" if kind == "homoscedastic" else GaussianNLL()
        model.compile(
            keras.optimizers.Adam(schedule), loss=loss, steps_per_execution=steps_per_epoch
        )
        return model

    return build


def candidates(n_inputs: int, n_train: int, *, widths, depths, epochs: int, batch_size: int,
               learning_rate: float, default: tuple[str, int, int]) -> dict:  # fmt: skip
    """{name: builder} for every kind × width × depth (depth 0: one linear model per kind,
    whatever the widths), and the ``default`` (kind, width, depth) if it is not among them."""
    per_epoch = int(np.ceil(n_train / batch_size))
    combos = list(
        dict.fromkeys((k, 0 if int(d) == 0 else int(w), int(d))
                      for k, w, d in itertools.product(KINDS, widths, depths))
    )  # fmt: skip
    if tuple(default) not in combos:
        combos.append(tuple(default))
    return {
        name(kind, w, d): builder(
            kind,
            n_inputs,
            w,
            d,
            learning_rate=learning_rate,
            steps=epochs * per_epoch,
            steps_per_epoch=per_epoch,
        )
        for kind, w, d in combos
    }


def test_loglik(la, x, y, scale: float = 1.0) -> float:
    """The mean test log-likelihood per point of the Laplace predictive N(μ, σ²) (σ with the
    noise: 1/β, or the heteroscedastic head), in units of ``scale``."""
    mean, std = la.predict(x)
    return -metrics.gaussian_nll(mean, std, y) - float(np.log(scale))


def run_split(split, candidate_builders: dict, *, dataset: str, split_id: int, epochs: int,
              batch_size: int, seed: int, restarts: int = 1,
              **callback_options) -> list[dict]:  # fmt: skip
    """Train every candidate on ``split`` (a :class:`~sigma.lab.data.RegressionSplit`) with
    :func:`sigma.compare_models` (``restarts`` times, the largest evidence kept); one row per
    candidate: its evidence (total, per point, data fit, Occam factor, symmetry term, γ, P),
    how far training stopped from its mode (``mode_gap``, nats),
    its test log-likelihood per point, whether the evidence chose it, the restart kept,
    training seconds."""
    with warnings.catch_warnings():  # the gaps are recorded in the rows instead
        warnings.filterwarnings("ignore", message="training stopped short of the mode")
        result = compare_models(
            candidate_builders, split.x_train, split.y_train, epochs=epochs,
            batch_size=batch_size, seed=seed, restarts=restarts, verbose=0, **callback_options,
        )  # fmt: skip
    n, shift = len(split.x_train), float(np.log(split.y_scale))
    rows = []
    for row in result.table:
        la = result.laplaces[row["name"]]
        kind, width, depth = parse(row["name"])
        rows.append(
            {
                "dataset": dataset, "split": split_id, "candidate": row["name"], "kind": kind,
                "width": width, "depth": depth, "log_evidence": row["log_evidence"],
                "evidence_per_point": row["log_evidence"] / n - shift,
                "data_fit": row["data_fit"], "occam": row["occam"], "symmetry": row["symmetry"],
                "mode_gap": row["mode_gap"],
                "gamma": row["gamma"],
                "n_params": row["n_params"],
                "test_loglik": test_loglik(la, split.x_test, split.y_test, split.y_scale),
                "chosen": row["name"] == result.best, "restart": row["restart"],
                "seconds": row["seconds"],
            }
        )  # fmt: skip
    return rows


def summary(rows: list[dict], default: str) -> dict:
    """Per data set: over its splits, how often the evidence's choice has the best test
    log-likelihood (``agreement``), the mean shortfall of the choice from the best
    (``regret``, nats per point; ``regret_when_missed``: over the splits where it is not the
    best), the mean test log-likelihood of the choice, of the held-out best and of the
    ``default`` candidate, and how often the choice is at least as good as the default.

    And the floor of the regret: ``fixed_regret``, the regret of the single candidate that,
    chosen in hindsight for every split, is the closest to the held-out best on average
    (``best_fixed``; an oracle over candidates, not over splits). The held-out best of each
    split is a maximum over candidates whose test log-likelihoods scatter with the split and
    the training, so even this choice has a regret: a selector that chooses per split can
    only beat it by telling the splits apart."""
    out = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        regrets, chosen, best, fixed, wins, picks = [], [], [], [], [], []
        shortfall = {}  # candidate → its regret on each split
        for split in dict.fromkeys(r["split"] for r in rows if r["dataset"] == dataset):
            these = [r for r in rows if r["dataset"] == dataset and r["split"] == split]
            top = max(r["test_loglik"] for r in these)
            pick = next(r for r in these if r["chosen"])
            base = next(r for r in these if r["candidate"] == default)
            for r in these:
                shortfall.setdefault(r["candidate"], []).append(top - r["test_loglik"])
            regrets.append(top - pick["test_loglik"])
            chosen.append(pick["test_loglik"])
            best.append(top)
            fixed.append(base["test_loglik"])
            wins.append(pick["test_loglik"] >= base["test_loglik"])
            picks.append(pick["candidate"])
        regrets = np.array(regrets)
        missed = regrets[regrets > 0]
        out[dataset] = {
            "splits": len(regrets),
            "agreement": float(np.mean(regrets == 0)),
            "regret": float(regrets.mean()),
            "regret_when_missed": float(missed.mean()) if missed.size else 0.0,
            "chosen_test_loglik": float(np.mean(chosen)),
            "best_test_loglik": float(np.mean(best)),
            "default_test_loglik": float(np.mean(fixed)),
            "chosen_minus_default": float(np.mean(chosen) - np.mean(fixed)),
            "chosen_at_least_default": float(np.mean(wins)),
            "choices": picks,
            "best_fixed": min(shortfall, key=lambda c: np.mean(shortfall[c])),
            "fixed_regret": float(min(np.mean(v) for v in shortfall.values())),
        }
    return out


def plot(rows: list[dict], default: str):
    """Evidence per point against test log-likelihood per point, one panel per data set: every
    candidate on every split (circles homoscedastic, triangles heteroscedastic, darker = wider,
    larger = deeper, grey = linear), the evidence's choice ringed in black, the default
    crossed."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.6 * len(datasets), 4.4), squeeze=False)
    widths = sorted({r["width"] for r in rows if r["depth"] > 0})
    for ax, dataset in zip(axes[0], datasets, strict=True):
        these = [r for r in rows if r["dataset"] == dataset]
        for r in these:
            if r["depth"] == 0:  # linear: no width to shade by
                color = "0.5"
            else:
                shade = 0.35 + 0.65 * widths.index(r["width"]) / max(len(widths) - 1, 1)
                cmap = plt.cm.Blues if r["kind"] == "homoscedastic" else plt.cm.Oranges
                color = cmap(shade)
            ax.scatter(r["evidence_per_point"], r["test_loglik"], s=32 + 18 * r["depth"],
                       marker="o" if r["kind"] == "homoscedastic" else "^", color=color,
                       edgecolors="black" if r["chosen"] else "none", linewidths=1.4,
                       zorder=3 if r["chosen"] else 2)  # fmt: skip
            if r["candidate"] == default:
                ax.scatter(r["evidence_per_point"], r["test_loglik"], marker="x", s=40,
                           color="black", zorder=4)  # fmt: skip
        ax.set_xlabel("log evidence per training point (nats)")
        ax.set_ylabel("test log-likelihood per point (nats)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=plt.cm.Blues(0.8), label="homoscedastic"),
        plt.Line2D([], [], marker="^", ls="", color=plt.cm.Oranges(0.8), label="heteroscedastic"),
        plt.Line2D([], [], marker="o", ls="", color="0.5", label="linear (no hidden layer)"),
        plt.Line2D([], [], marker="o", ls="", mfc="none", mec="black", label="evidence's choice"),
        plt.Line2D([], [], marker="x", ls="", color="black", label=f"default ({default})"),
    ]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
