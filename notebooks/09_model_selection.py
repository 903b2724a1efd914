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
#   out — counted only where the posterior tells the copies apart.
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
depths: list = [1, 2]  # hidden layers of the candidates
default_width: int = 50  # the fixed default: homoscedastic, one hidden layer of this width
n_friedman: int = 400  # training samples of Friedman #1
n_friedman_test: int = 1000  # test samples of Friedman #1
friedman_noise: float = 1.0  # noise standard deviation of Friedman #1 (original units)
epochs: int = 60  # training epochs of every candidate
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
# −½ ln(2π) − ln 1 − ½ = −1.42 in the original units, for noise 1). The learning rate is one
# at which the smallest networks, too, reach the weights the evidence assumes (the most
# probable ones) within the epochs: at 0.005, 60 epochs left every Friedman network far from
# them (§ Conclusions).

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
# its three terms (totals, nats), γ of P, and the test log-likelihood per point. The split into
# data fit and Occam factor shows the trade: wider and deeper networks fit better and pay more;
# the symmetry term counts their equivalent modes.

# %%
per_candidate = (
    results.groupby(["dataset", "candidate"], sort=False)[
        ["evidence_per_point", "data_fit", "occam", "symmetry", "gamma", "n_params",
         "test_loglik", "seconds"]
    ]
    .mean()
    .sort_values(["dataset", "evidence_per_point"], ascending=[True, False])
)  # fmt: skip
per_candidate

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
# it looks at the test set) and of the default.

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
# parameters (5 splits per data set, 8 candidates, 60 epochs at a learning rate of 0.05,
# structure "kfac", one α per layer: 80 trainings) by this notebook
# (`papermill notebooks/09_model_selection.ipynb out.ipynb`, 1,982 s on 2 cores shared with
# other work and with test runs), and the same by `sigma.lab.occam.run_split` called as in §1,
# one process per data set side by side (566 s for diabetes, 577 s for Friedman #1).
#
# * **Diabetes: the aim is met.** The evidence picks the homoscedastic 50×2 network on all 5
#   splits; it is the held-out best on 2, and on average its test log-likelihood is 0.018 nats
#   per point behind the best candidate's (0.029 on the splits where it is not the best) and
#   0.015 ahead of the default (homoscedastic 50×1): −5.477 against −5.492, the oracle −5.460;
#   at least as good as the default on 4 splits of 5. All 8 candidates lie within 0.23 nats of
#   each other on held-out data; evidence and test log-likelihood rank them alike (Spearman
#   0.62, mean of the splits).
# * **Friedman #1: close, not met.** The evidence picks the homoscedastic 50×2 on all 5
#   splits: 0.026 nats per point behind the held-out best on average (the aim is 0.02; it is
#   the best on 1 split), and 0.007 behind the default (−1.784 against −1.778; the
#   homoscedastic 50×1 has the best mean of the candidates). The evidence now ranks the
#   candidates in nearly the order of the test log-likelihood (Spearman 0.55, against −0.67
#   before the two changes below), and the heteroscedastic candidates, which overfit the noise
#   level (data fit up to +192, test log-likelihood −1.93 to −2.29), are never chosen.
# * **What it took.** Two things kept the evidence from choosing well on Friedman #1 (there a
#   regret of 0.29 nats, the evidence ranking the candidates in reverse, Spearman −0.67):
#   1. *Training.* At a learning rate of 0.005 no network came near the most probable weights
#      in 60 epochs (the 10×1 network trained without the evidence on split 0: training RMSE
#      2.3 against a noise of 1.0; at 0.05, 1.1), while the evidence is that of the most probable weights. The undertrained small
#      networks had the best evidences and the worst test log-likelihoods. At 0.05 the mean test
#      log-likelihoods of the homoscedastic candidates rose from −2.34…−1.98 to −1.88…−1.78,
#      0.36 nats above the floor of −1.42 at best.
#   2. *The equivalent modes.* The Laplace evidence is that of one mode, and a network of H
#      tanh units in a layer has H! 2^H of them, all giving the same function: ln 50! + 50 ln 2
#      = 183 nats for a 50-unit layer, 22 for a 10-unit one (MacKay 1992a; Bishop 1995,
#      §10.6). Without that term the evidence chose a 10-unit network on every split (regret
#      0.13 nats at the learning rate of 0.05; 0.034 on diabetes).
# * **What is left.** The count of modes assumes they are distinct; a wide network whose prior
#   leaves most of its weights undetermined (γ = 191 of 3,151 for the homoscedastic 50×2) has
#   many that nearly coincide, so 366 nats overstates its symmetry term — it is chosen on every
#   split of both data sets. Counting only the units the data determine (h = Σ_u min(1, γ_u),
#   γ_u over a unit's weights; ln(H!/(H − h)!) + h ln 2) lowers it to about 259 nats and
#   changes no choice on Friedman #1 (regret 0.026), while on diabetes the regret falls to
#   0.011 (`bench/symmetry_count.py`, the same candidates and splits): the count of modes, not
#   the data fit, still decides between the 50-unit networks there.
#   The held-out best among the homoscedastic networks changes from
#   split to split (10×1, 50×1 or 50×2) by a few hundredths of a nat, of the size of the
#   remaining regret.

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
