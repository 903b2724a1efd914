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
#   direction in weight space the data determine: the price of the weights the fit uses.
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
batch_size: int = 32  # minibatch size
learning_rate: float = 0.005  # Adam's initial step, cosine-decayed to 1% over training
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
# For each data set and split, `compare_models` trains every candidate from the same seed for
# the same epochs (the training set's inputs and targets standardised), with α (one per layer)
# and, for the homoscedastic candidates, β re-estimated by the evidence every `every` epochs.
# Diabetes: 442 patients, random 80/20 splits. Friedman #1: 10 inputs of which 5 matter,
# Gaussian noise of standard deviation `friedman_noise` (so the best possible test
# log-likelihood per point is −½ ln(2π) − ln 1 = −0.92 in the original units, for noise 1).

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
            seed=s, structure=structure, prior=prior, every=every,
        )  # fmt: skip
results = pd.DataFrame(rows)
print(f"{len(results)} trained candidates in {time.time() - started:.0f} s")

# %% [markdown]
# Mean over the splits, per candidate: the evidence (per training point, original units) with
# its two terms (totals, nats), γ of P, and the test log-likelihood per point. The split into
# data fit and Occam factor shows the trade: wider and deeper networks fit better and pay more.

# %%
per_candidate = (
    results.groupby(["dataset", "candidate"], sort=False)[
        ["evidence_per_point", "data_fit", "occam", "gamma", "n_params", "test_loglik",
         "seconds"]
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
# parameters (5 splits per data set, 8 candidates, 60 epochs, structure "kfac", one α per
# layer: 80 trainings, 868 s on 2 cores shared with other work).
#
# * **Diabetes: the evidence chooses well.** It picks the homoscedastic 10×1 network on all 5
#   splits; that is the held-out best on 2 of them, and on average its test log-likelihood is
#   0.012 nats per point behind the best candidate's (0.020 when it is not the best) and
#   0.009 ahead of the default (homoscedastic 50×1): −5.454 against −5.464, the oracle −5.443.
#   The choice is at least as good as the default on 4 splits of 5. On these 353 training
#   samples the test log-likelihoods of all 8 candidates lie within 0.06 nats of each other, and
#   the evidence and the test log-likelihood rank them alike (Spearman 0.42, mean of the
#   splits).
# * **Friedman #1: the evidence's choice beats the default but is far from the best.** It
#   picks the smallest networks (heteroscedastic 10×1 on 4 splits, homoscedastic 10×1 on one),
#   −2.148 per point against the default's −2.247, but the held-out best is always a large
#   network (on average −1.856; the heteroscedastic 50×2 has the best mean, −1.864): a regret
#   of 0.29 nats, and the evidence ranks the candidates nearly in the reverse order of the
#   test log-likelihood (Spearman −0.67). The aim (within 0.02 nats of the best
#   on both data sets) is **not met** on Friedman #1.
# * **Why, in the table of §1:** the wide and deep networks fit Friedman's smooth function much
#   better (data fit −47 for the homoscedastic 50×2 against −251 for the 10×1) but their Occam
#   factor is larger still (−428 against −122): γ = 255 of 3,151 weights determined by 400
#   samples. After 60 epochs no candidate is near the noise floor (the best possible test
#   log-likelihood is −0.92 per point for noise 1; the best candidate reaches −1.86), so the
#   weights are not the most probable ones the evidence assumes. The Kronecker factorisation
#   adds to the penalty of size but does not cause the ranking: in a check outside this
#   notebook (split 0, the four one-layer candidates, 60 epochs), the full Gauss–Newton
#   evidence gave Occam factors of −433 and −208 for the heteroscedastic 50×1 and 10×1 where
#   KFAC gave −530 and −243, and the same order of the four candidates — the 50×1, the best on
#   held-out data, last. With 200 epochs (split 0, four candidates, KFAC) the choice was the
#   homoscedastic 10×1, 0.16 nats per point behind the best (the homoscedastic 50×2), and the
#   overfitted heteroscedastic 50×2 came last by both measures. Where all candidates generalise
#   alike (diabetes), the evidence chooses well; where more weights keep paying off on held-out
#   data, it stays with the small networks.

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
