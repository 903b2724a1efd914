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
# # Noise that depends on x, and coverage you can guarantee
#
# sigma's regression error bar σ²(x) = 1/β + g(x)ᵀA⁻¹g(x) has one noise level 1/β for every
# input. Where the noise grows with x, that one level is a compromise: too wide where the data
# are quiet, too narrow where they are noisy. Two remedies, both in `sigma`:
#
# 1. **`Laplace(model, x, y, likelihood="heteroscedastic")`** — the network has two outputs per
#    target, a mean μ(x) and a log-variance ln σ²(x), trained on the Gaussian negative
#    log-likelihood (`sigma.losses.GaussianNLL`, with `sigma.EvidenceCallback` choosing the prior
#    precisions α). The curvature is the generalised Gauss–Newton matrix of that likelihood in
#    its natural parameters (Immer et al. 2023), positive definite, and the predictive variance
#    is **σ²(x) = the noise head σ²_noise(x) + the weight uncertainty of the mean**;
#    `la.predict(x, split=True)` gives the two apart.
# 2. **`la.conformalize(x_cal, y_cal)`** — split conformal prediction on the normalised residual
#    |y − μ|/σ, from a calibration set the network never trained on: the interval
#    μ ± q̂ σ with q̂ the ⌈(n + 1)(1 − ε)⌉-th smallest calibration score covers at least 1 − ε
#    of exchangeable test points, in finite samples, whatever the model.
#
# First a 1-D curve whose noise grows along x; then Friedman #1 with a noise level that grows
# with x₁ and scikit-learn's diabetes data, against the deep ensemble with Gaussian heads
# (Lakshminarayanan et al. 2017) and MC dropout (Gal & Ghahramani 2016), all from the same MLP
# trained for the same epochs. The two Laplace methods are written out below; the data, the
# baselines and the scoring are in `sigma/lab/noise.py` and `sigma/lab/baselines.py`. Both use
# the Kronecker-factored structure (parameter `structure`): on the first Friedman seed the full
# P×P one gave the same test NLL to within 0.01 at about four times the training time.

# %% tags=["parameters"]
seed: int = 0  # first seed of the data, splits, initialisations, shufflings and masks
n_seeds: int = 5  # seeds (Friedman) and random splits (diabetes) averaged over
n_line: int = 300  # training samples of the 1-D example
hidden_line: int = 32  # tanh units of the 1-D MLP's hidden layer
epochs_line: int = 300  # training epochs of the 1-D networks
n_friedman: int = 1000  # training samples of Friedman #1 (a fraction held out for calibration)
n_friedman_test: int = 2000  # held-out test samples of Friedman #1
friedman_low: float = 0.2  # noise standard deviation of Friedman #1 where x1 is 0
friedman_high: float = 4.0  # noise standard deviation of Friedman #1 where x1 is 1
hidden_friedman: int = 50  # tanh units of the Friedman MLP's hidden layer
hidden_diabetes: int = 20  # tanh units of the diabetes MLP's hidden layer
epochs_friedman: int = 100  # training epochs of every Friedman network
epochs_diabetes: int = 100  # training epochs of every diabetes network
calibration: float = 0.2  # fraction of each training set held out for conformal calibration
resplits: int = 200  # random calibration/test re-splits the conformal coverage is averaged over
every: int = 10  # re-estimate α by the evidence every this many epochs
structure: str = "kfac"  # Laplace structure of both Laplace methods ("full", "diag", "kfac", ...)
ensemble_size: int = 5  # members of the deep ensemble
mc_samples: int = 100  # test-time passes of MC dropout
metrics_path: str = ""  # where to write metrics.json (empty: do not write)

# %%
import inspect
import time

import numpy as np
import pandas as pd

from sigma.lab import data, noise
from sigma.lab.models import Recipe
from sigma.sweep.records import save_metrics

started = time.time()
pd.set_option("display.width", 200)
pd.set_option("display.precision", 3)
line_recipe = Recipe(hidden=(hidden_line,), epochs=epochs_line, every=every,
                     structure=structure)  # fmt: skip
friedman_recipe = Recipe(
    hidden=(hidden_friedman,), epochs=epochs_friedman, every=every, structure=structure,
    ensemble_size=ensemble_size, mc_samples=mc_samples,
)  # fmt: skip
diabetes_recipe = Recipe(
    hidden=(hidden_diabetes,), epochs=epochs_diabetes, every=every, structure=structure,
    ensemble_size=ensemble_size, mc_samples=mc_samples,
)  # fmt: skip
columns = ["nll", "rmse", "coverage_68", "coverage_95", "conformal_coverage_68",
           "conformal_coverage_90", "conformal_coverage_95", "width_95", "conformal_width_90",
           "conformal_width_95", "seconds"]  # fmt: skip

# %% [markdown]
# ## The two Laplace methods
#
# The same MLP (the recipe's `hidden` tanh units, Adam with a cosine-decayed step) trained with
# `sigma.EvidenceCallback`, which re-estimates the prior precisions α every `every` epochs and
# leaves its Laplace at the final weights in `cb.laplace`:
#
# * **homoscedastic** — K outputs on the squared error: one noise precision β, set by the
#   evidence;
# * **heteroscedastic** — 2K outputs [μ | ln σ²] on `sigma.losses.GaussianNLL()`; the callback
#   reads the compiled loss and fits `Laplace(likelihood="heteroscedastic")` (no β: the noise is
#   the head's).

# %%
for method in (noise.homoscedastic_laplace, noise.heteroscedastic_laplace, noise._evidence_trained):
    print(inspect.getsource(method))

# %% [markdown]
# ## 1. A curve whose noise grows along x
#
# t = sin(3x) + ε on x ∈ [−1, 1], with the noise standard deviation rising linearly from 0.05
# to 0.6. The same 1-32-1 tanh MLP is trained twice with the evidence: on the squared error
# (one noise level 1/β) and with a second output ln σ²(x) on the Gaussian NLL.

# %%
x_line, y_line, _ = noise.growing_noise(n_line, seed=seed)
homo_line = noise.homoscedastic_laplace(x_line, y_line, line_recipe, seed)
hetero_line = noise.heteroscedastic_laplace(x_line, y_line, line_recipe, seed)
grid = np.linspace(-1, 1, 200)[:, None]
bands = {
    "Laplace (homoscedastic)": homo_line.predict(grid),
    "Laplace (heteroscedastic)": hetero_line.predict(grid),
}
figure = noise.plot_bands(x_line, y_line, grid, noise.noise_level(grid), bands)
# %% [markdown]
# The dashed lines are the true noise band (± 2 s(x)) around each mean. The homoscedastic band
# has one width: it is far wider than the noise on the left and narrower than it on the right.
# The heteroscedastic band follows the noise. Coverage of the 95% interval in three regions of
# x, on fresh test data from the same curve:

# %%
x_new, y_new, _ = noise.growing_noise(3000, seed=seed + 1)
regions = pd.concat(
    [
        pd.DataFrame(noise.coverage_by_region(*la.predict(x_new), y_new, x_new)).assign(method=name)
        for name, la in (("homoscedastic", homo_line), ("heteroscedastic", hetero_line))
    ]
).pivot(index="region", columns="method", values="coverage")
regions

# %% [markdown]
# `predict(x, split=True)` separates the two sources of the heteroscedastic σ: the noise head
# (aleatoric) and the weight uncertainty of the mean (epistemic), here at a few x:

# %%
x_show = np.array([[-0.9], [0.0], [0.9], [1.3]])
mean_show, aleatoric_show, epistemic_show = hetero_line.predict(x_show, split=True)
pd.DataFrame({"x": x_show[:, 0], "mean": mean_show[:, 0], "aleatoric std": aleatoric_show[:, 0],
              "epistemic std": epistemic_show[:, 0],
              "true noise std": noise.noise_level(np.clip(x_show, -1, 1))[:, 0]})  # fmt: skip

# %% [markdown]
# At x = 1.3, outside the data, the epistemic part grows; the noise head extrapolates its trend.
#
# ## 2. Friedman #1 with noise that grows with x₁
#
# Friedman #1 (10 inputs, 5 relevant), 1,000 training samples of which 20% are held out for
# calibration, 2,000 test samples, noise standard deviation 0.2 + 3.8 x₁ (from 0.2 to 4 in the
# target's units, whose spread is about 5). Four methods on the same 10-50-1 (or 10-50-2) MLP,
# mean over the seeds; the conformal columns are averaged over random re-splits of the
# calibration and test points (the guarantee is about that average).

# %%
friedman_rows = []
for s in range(seed, seed + n_seeds):
    split = noise.friedman_growing_noise(
        n_friedman, n_friedman_test, low=friedman_low, high=friedman_high, seed=s
    )
    friedman_rows += noise.run(split, friedman_recipe, seed=s,
                               calibration=calibration, resplits=resplits)  # fmt: skip
friedman = pd.DataFrame(friedman_rows)
friedman_table = friedman.groupby("method", sort=False)[columns].mean()
friedman_table

# %% [markdown]
# The NLL per seed (lower is better):

# %%
friedman.pivot(index="seed", columns="method", values="nll")

# %% [markdown]
# ## 3. Diabetes
#
# scikit-learn's diabetes data (442 patients, 10 inputs), random 80/20 splits, 20% of each
# training set held out for calibration, a 10-20-1 (or 10-20-2) MLP. The noise is the data's own.

# %%
diabetes_rows = []
for s in range(seed, seed + n_seeds):
    diabetes_rows += noise.run(data.diabetes_split(seed=s), diabetes_recipe, seed=s,
                               calibration=calibration, resplits=resplits)  # fmt: skip
diabetes = pd.DataFrame(diabetes_rows)
diabetes_table = diabetes.groupby("method", sort=False)[columns].mean()
diabetes_table

# %% [markdown]
# ## 4. The targets
#
# On the x-dependent Friedman #1: the heteroscedastic Laplace's NLL at or below the deep
# ensemble's (mean of the seeds); its conformal coverage within ±1 point of nominal at 90% and
# 95%, with intervals no wider than the ensemble's conformalised ones.

# %%
het, ens = friedman_table.loc[noise.HETEROSCEDASTIC], friedman_table.loc[noise.ENSEMBLE]
targets = pd.DataFrame(
    [
        ("NLL ≤ deep ensemble's", het["nll"], ens["nll"], bool(het["nll"] <= ens["nll"])),
        ("conformal coverage at 90% within ±1 point", het["conformal_coverage_90"], 0.90,
         bool(abs(het["conformal_coverage_90"] - 0.90) <= 0.01)),
        ("conformal coverage at 95% within ±1 point", het["conformal_coverage_95"], 0.95,
         bool(abs(het["conformal_coverage_95"] - 0.95) <= 0.01)),
        ("conformal 90% width ≤ ensemble's", het["conformal_width_90"],
         ens["conformal_width_90"], bool(het["conformal_width_90"] <= ens["conformal_width_90"])),
        ("conformal 95% width ≤ ensemble's", het["conformal_width_95"],
         ens["conformal_width_95"], bool(het["conformal_width_95"] <= ens["conformal_width_95"])),
    ],
    columns=["target", "heteroscedastic Laplace", "reference", "met"],
)  # fmt: skip
targets

# %% [markdown]
# ## Conclusions
#
# The tables above are this run's; the figures quoted below were measured at the default
# parameters (5 seeds, 100 epochs, structure "kfac"; 303 s on 2 shared cores), the setting
# the targets are stated for.
#
# * **One noise level cannot fit noise that varies.** On the 1-D curve the homoscedastic
#   Laplace's 95% interval covers everything where the noise is small (100% for x < −1/3) and
#   only about 85% where it is large (x > 1/3); the heteroscedastic Laplace's noise head tracks
#   the true noise (aleatoric std 0.16, 0.29, 0.58 against the true 0.08, 0.33, 0.57 at
#   x = −0.9, 0, 0.9) and covers 91–97% in every region. Beyond the data (x = 1.3) its
#   epistemic part is 2.3 times what it is at x = 0.9.
# * **Friedman #1 with noise growing with x₁: the heteroscedastic Laplace has the lowest test
#   NLL** — 2.21 against the deep ensemble's 2.30, the homoscedastic Laplace's 2.44 and MC
#   dropout's 2.47 (mean of 5 seeds), and it is below the ensemble on every seed, with one
#   network against five. Its RMSE is slightly worse than the homoscedastic Laplace's (2.88
#   against 2.77): the Gaussian NLL weights the noisy half of the inputs less when fitting the
#   mean, which is the right trade for the likelihood and the wrong one for the squared error.
# * **Before calibration, every method misses its nominal coverage by its own amount**: the
#   deep ensemble is over-confident (60% and 88% at 68% and 95%), the heteroscedastic Laplace
#   slightly so (67%, 94%); the homoscedastic Laplace over-covers at 68% (76%) and is right at
#   95% only on average over x, too wide where the noise is small and too narrow where it is
#   large (as on the 1-D curve).
# * **After split conformal calibration the coverage is the nominal one for every method**
#   (68.3–68.4%, 90.0–90.1%, 95.0–95.1% on Friedman; 68%, 90–91%, 96% on diabetes, averaged
#   over the re-splits; the expected value is ⌈(n + 1)(1 − ε)⌉/(n + 1): 95.0% for the 200
#   Friedman calibration points at 95%, 95.8% for diabetes' 71). What then differs is the
#   **width**: the heteroscedastic σ(x) gives the narrowest conformal intervals on Friedman
#   (8.8 at 90% and 10.7 at 95%, against the ensemble's 9.4 and 11.6 and the homoscedastic
#   Laplace's 9.1 and 11.6), because its normalised residuals |y − μ|/σ are alike across
#   inputs.
# * **Diabetes** (282 training samples after the calibration hold-out, the data's own noise):
#   no gain from the variance head. The homoscedastic and heteroscedastic Laplace have the same
#   NLL (5.46 and 5.45; ensemble 5.52, MC dropout 5.48) and conformal intervals of about the
#   same width (240 and 245 at 95%, the ensemble's 260): with so few samples the noise head
#   has little to learn, and a constant noise level is as good a model as the data support.
# * **All five targets of the issue are met** at the defaults (the targets table). Conformal
#   calibration fixes coverage for any method and costs only a held-out set; the
#   heteroscedastic likelihood is what makes the calibrated intervals narrow where the data
#   are quiet.

# %%
record = save_metrics(
    metrics_path,
    dict(
        line_regions=regions.to_dict(),
        friedman=friedman_table.to_dict(orient="index"),
        friedman_nll_per_seed=friedman.pivot(index="seed", columns="method", values="nll").to_dict(
            orient="list"
        ),
        diabetes=diabetes_table.to_dict(orient="index"),
        targets={row.target: bool(row.met) for row in targets.itertuples()},
        seconds=time.time() - started,
    ),
)
print(f"{time.time() - started:.0f} s")
