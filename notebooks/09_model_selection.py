# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which model? Let the evidence choose
#
# sigma chooses the noise precision β and the prior precisions α by the evidence, the log
# marginal likelihood ln p(y | model) of the training targets. The same number can choose the
# model itself — homoscedastic or heteroscedastic, how wide, how deep — without held-out data
# (MacKay 1992; Immer et al. 2021 for deep networks). It is a balance of two terms
# ([docs/math.md §8](../docs/math.md#8-which-model-comparing-evidences)):
#
# * the **data fit**, the log likelihood of the training targets at the trained weights, which
#   a bigger network raises;
# * the **Occam factor**, −Σ α_g E_Wg + ½ ln|D_α| − ½ ln|A|, about −½ ln(λ_i/α) for every
#   direction in weight space the data determine: the price of the weights the fit uses;
# * and, for a network, the **symmetry** term: the log of the number of weight vectors that give
#   the same function (up to H! permutations of a hidden layer's H units, 2^H sign flips for
#   tanh), each a mode of the posterior that the Laplace approximation at one of them leaves
#   out — counted only where the posterior tells the copies apart: on the straight line
#   between them, or along the rotation that carries one unit into the other's place (units
#   in tanh's linear range, or unused, are joined by it).
#
# `sigma.compare_models(candidates, x, y, epochs=...)` trains each candidate with
# `sigma.EvidenceCallback` and ranks them by the evidence. Here every candidate (homoscedastic
# and heteroscedastic × widths × depths) is trained on scikit-learn's **diabetes** data and on
# **Friedman #1** with a known noise level, over several random splits, and its evidence is
# set against its **test log-likelihood per point**, which the evidence never sees. The
# questions: how often is the evidence's choice the held-out best, how far behind is it when it
# is not, and does it beat a fixed default (homoscedastic, one hidden layer of 50 units)?
# The code is in `sigma/lab/occam.py`.

# %% tags=["parameters"]
seed: int = 0  # seed of the first split, of every initialisation and shuffling
n_splits: int = 5  # random train/test splits of each data set
widths: list = [10, 50]  # hidden units per layer of the candidates
depths: list = [0, 1, 2]  # hidden layers of the candidates (0: a linear model, one per kind)
default_width: int = 50  # the fixed default: homoscedastic, one hidden layer of this width
n_friedman: int = 400  # training samples of Friedman #1
n_friedman_test: int = 1000  # test samples of Friedman #1
friedman_noise: float = 1.0  # noise standard deviation of Friedman #1 (original units)
epochs: int = 200  # training epochs of every candidate: each near its mode (mode_gap)
restarts: int = 2  # trainings of every candidate (seeds split, split + 1, ...), best evidence kept
batch_size: int = 32  # minibatch size
learning_rate: float = 0.05  # Adam's initial step, cosine-decayed to 1% over training
every: int = 10  # re-estimate α, β by the evidence every this many epochs
structure: str = "kfac"  # Laplace structure of every candidate (one for all: §8)
prior: str = "layer"  # one α per layer
metrics_path: str = ""  # where to write metrics.json (empty: do not write)

# %%
import time

import numpy as np
import pandas as pd
from IPython.display import display
from scipy.stats import spearmanr

from sigma.lab import data, occam
from sigma.sweep.records import save_metrics

started = time.time()
pd.set_option("display.width", 200)
pd.set_option("display.precision", 3)
default = occam.name("homoscedastic", default_width, 1)
datasets = {
    "diabetes": lambda s: data.diabetes_split(seed=s),
    "friedman": lambda s: data.friedman_regression(
        n_friedman, n_friedman_test, noise=friedman_noise, seed=s
    ),
}

# %% [markdown]
# ## 1. Every candidate on every split
#
# For each data set and split, `compare_models` trains every candidate from the same seeds for
# the same epochs (the training set's inputs and targets standardised), with α (one per layer)
# and, for the homoscedastic candidates, β re-estimated by the evidence every `every` epochs;
# each candidate `restarts` times (seeds split, split + 1, ...), the training with the largest
# evidence representing it: the evidence chooses among the modes of one network too.
# Diabetes: 442 patients, random 80/20 splits. Friedman #1: 10 inputs of which 5 matter,
# Gaussian noise of standard deviation `friedman_noise` (so the best possible mean test
# log-likelihood per point, that of the true function with the true noise, is
# −½ ln(2π) − ln 1 − ½ = −1.42 in the original units, for noise 1). The evidence is that of
# the most probable weights, and the training is set to reach them: a learning rate at which
# the smallest networks train too (at 0.005, every Friedman network stayed far from them),
# batches of equal size drawn from a shuffled stream (`compare_models` does this: Keras
# weighs a short last batch like a full one, which held the linear models 7–29 nats from
# their modes), and enough epochs that each candidate ends near its mode — within a nat or a
# few, which the `mode_gap` column below measures (§ Conclusions).

# %%
rows = []
for dataset, make_split in datasets.items():
    for s in range(seed, seed + n_splits):
        split = make_split(s)
        builders = occam.candidates(
            split.x_train.shape[1], len(split.x_train), widths=widths, depths=depths,
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            default=("homoscedastic", default_width, 1),
        )  # fmt: skip
        rows += occam.run_split(
            split, builders, dataset=dataset, split_id=s, epochs=epochs, batch_size=batch_size,
            seed=s, restarts=restarts, structure=structure, prior=prior, every=every,
        )  # fmt: skip
results = pd.DataFrame(rows)
print(f"{len(results)} trained candidates in {time.time() - started:.0f} s")

# %% [markdown]
# Mean over the splits, per candidate: the evidence (per training point, original units) with
# its three terms (totals, nats), how far training stopped from the mode (`mode_gap`, nats: the
# rise of the log posterior a Newton step would give, `sigma.selection.mode_gap`), γ of P, and
# the test log-likelihood per point. The split into data fit and Occam factor shows the trade:
# wider and deeper networks fit better and pay more; the symmetry term counts their equivalent
# modes. The evidence assumes the most probable weights: a candidate's evidence is short by
# roughly its gap.

# %%
per_candidate = (
    results.groupby(["dataset", "candidate"], sort=False)[
        ["evidence_per_point", "data_fit", "occam", "symmetry", "mode_gap", "gamma",
         "n_params", "test_loglik", "seconds"]
    ]
    .mean()
    .sort_values(["dataset", "evidence_per_point"], ascending=[True, False])
)  # fmt: skip
per_candidate.round({"mode_gap": 3})  # shown in plain decimals, not e-notation

# %% [markdown]
# ## 2. Evidence against held-out log-likelihood
#
# Every candidate on every split; the evidence's choice on each split is ringed, the fixed
# default crossed. A good selector puts its choices at the top of each cloud.

# %%
figure = occam.plot(rows, default)

# %% [markdown]
# How well the evidence orders the candidates, split by split (Spearman's rank correlation
# between the evidence and the test log-likelihood, mean over the splits):

# %%
ranks = {
    dataset: float(np.mean([spearmanr(g["log_evidence"], g["test_loglik"])[0]
                            for _, g in results[results.dataset == dataset].groupby("split")]))
    for dataset in datasets
}  # fmt: skip
pd.Series(ranks, name="rank correlation")

# %% [markdown]
# ## 3. The evidence's choice against the held-out best and the default
#
# Per data set, over the splits: how often the evidence chooses the candidate with the best
# test log-likelihood (`agreement`), the mean shortfall of its choice from that best
# (`regret`, nats per point, 0 when it agrees; `regret_when_missed` over the splits where it
# does not), and the mean test log-likelihood of the choice, of the held-out best (an oracle:
# it looks at the test set) and of the default. And the floor: the one candidate that, chosen
# in hindsight for every split, comes closest to the held-out best (`best_fixed`), and its
# regret (`fixed_regret`). The held-out best of a split is the largest of several test
# log-likelihoods that scatter with the split and the training, so even that choice falls
# short of it; a selector that chooses per split gets below the floor only by telling the
# splits apart.

# %%
summary = occam.summary(rows, default)
table = pd.DataFrame(summary).T
display(table.drop(columns="choices"))
pd.DataFrame({dataset: s["choices"] for dataset, s in summary.items()},
             index=range(seed, seed + n_splits)).rename_axis("split")  # fmt: skip

# %% [markdown]
# ## 4. The targets
#
# On both data sets: the evidence's choice within 0.02 nats per point of the held-out best on
# average, and a higher mean test log-likelihood than the fixed default.

# %%
targets = pd.DataFrame(
    [(f"{d}: regret ≤ 0.02 nats", s["regret"], 0.02, bool(s["regret"] <= 0.02))
     for d, s in summary.items()]
    + [(f"{d}: choice beats the default", s["chosen_test_loglik"], s["default_test_loglik"],
        bool(s["chosen_test_loglik"] > s["default_test_loglik"])) for d, s in summary.items()],
    columns=["target", "measured", "reference", "met"],
)  # fmt: skip
targets

# %% [markdown]
# ## Conclusions
#
# The tables above are this run's; the figures quoted below were measured at the default
# parameters (5 splits per data set, 10 candidates trained twice each: homoscedastic and
# heteroscedastic × a linear model and widths 10, 50 × depths 1, 2; 200 epochs on equal
# batches of 32 at a learning rate of 0.05, structure "kfac", one α per layer: 200 trainings)
# by this notebook (`python -m sigma.sweep run notebooks/09_model_selection.py --out DIR`,
# 576 s on 2 cores), and the same by `bench/symmetry_count.py --restarts 2`, which also ranks
# the same trainings by the other counts of modes.
#
# * **Diabetes: both aims are met.** The linear models are the held-out best on average
#   (−5.432 heteroscedastic, −5.441 homoscedastic, against −5.479 to −5.503 for the
#   homoscedastic networks, which fit the training targets better and the test targets worse).
#   The evidence picks the homoscedastic linear model on every split: 0.014 nats per point
#   behind the held-out best on average (the aim is 0.02), 0.040 ahead of the default
#   (−5.441 against −5.481); Spearman 0.56.
# * **Friedman #1: the default is beaten, the regret misses the aim.** The evidence picks the
#   homoscedastic 10×1 network on 4 splits and 50×1 on one: 0.026 nats per point behind the
#   held-out best (the aim is 0.02), 0.045 ahead of the default (−1.736 against −1.780);
#   Spearman 0.78. The best fixed candidate in hindsight, the 10×2 network, is 0.012 behind:
#   the evidence does not tell the splits apart as well as that.
# * **At the mode.** The evidence is that of the most probable weights, and `mode_gap` says
#   how far short of them each training stopped (½ gᵀA⁻¹g, the rise of the log posterior one
#   Newton step would give). Mean over the splits: the linear models at their modes (under
#   0.004 nats; the homoscedastic one's evidence is Bishop's closed form), the homoscedastic
#   networks within a
#   nat on diabetes and 1.3–3.3 nats on Friedman #1, the heteroscedastic ones 1.5–3 and 1.8–13.
#   Two things brought them there. *Equal batches*: `model.fit(x, y, batch_size=32)` on
#   diabetes's 353 training samples ends every epoch on a batch of one sample, which Keras
#   weighs like a full batch; that held the linear models up to 7 (homoscedastic) and 25–29
#   (heteroscedastic) nats from their modes (splits 0 and 1) however long they trained. `compare_models` now
#   draws equal batches from a shuffled stream. *Epochs*: at 60, the networks stopped 1–4 nats
#   short (the heteroscedastic 50×2 18–63); at 200 they are as above.
# * **The count of modes, at the mode.** Ranked on the same trainings
#   (`bench/symmetry_count.py --restarts 2`;
#   [docs/math.md §8](../docs/math.md#8-which-model-comparing-evidences)):
#
# | count of modes | Friedman #1 regret / vs default | diabetes regret / vs default |
# |---|---|---|
# | straight and path tests (sigma's) | **0.026 / +0.045** | **0.014 / +0.040** |
# | straight test only | 0.027 / +0.045 | 0.025 / +0.026 |
# | every permutation and flip | 0.040 / +0.033 | 0.064 / −0.011 |
# | none | 0.019 / +0.053 | 0.014 / +0.039 |
# | floor (best fixed candidate) | 0.012 (homoscedastic 10×2) | 0.006 (heteroscedastic linear) |
#
# * **What changed.** The previous figures of this notebook (Friedman #1 0.000 and +0.018,
#   diabetes 0.022 and +0.032, with the same count) came from candidates trained on `fit`'s own
#   batches for 60 epochs, which stopped up to 76 nats short of their modes — unevenly, so the
#   comparison partly ranked how far each training got. At the mode the count of modes matters
#   less: without any count the regret is as low (diabetes) or lower (Friedman #1, 0.019).
# * **What is left.** Friedman #1's regret misses the aim by 0.006, with 5 splits, at the
#   noise of the estimate (with one training per candidate: 0.031, and 0.014 on diabetes; with
#   three, `--restarts 3`: 0.044 and 0.016, still ahead of the default by 0.026 and 0.035). The
#   heteroscedastic networks on Friedman #1 still stop several nats short of their modes.
#   Earlier findings that still hold: at a learning rate of 0.005 no network came near its
#   mode in 60 epochs (a regret of 0.29 nats, Spearman −0.67); and the full Gauss–Newton
#   evidence chose no better than KFAC's (`bench/symmetry_count.py --depths 1,2 --full`,
#   measured on `fit`'s own batches).

# %%
record = save_metrics(
    metrics_path,
    dict(
        summary={d: {k: v for k, v in s.items()} for d, s in summary.items()},
        rank_correlation=ranks,
        per_candidate={f"{d} | {c}": row for (d, c), row in per_candidate.to_dict("index").items()},
        targets={row.target: bool(row.met) for row in targets.itertuples()},
        seconds=time.time() - started,
    ),
)
print(f"{time.time() - started:.0f} s")
