# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Sweep report: σ, coverage and evidence across β and epochs
#
# `make sweep` runs notebook 01 once per point of a parameter grid (`sweeps/beta_epochs.yaml`),
# each run in its own folder with a `metrics.json`. This notebook reads them all back into one
# table and asks what the sweep says:
#
# * how the error bars σ of each output move with the noise precision β,
# * whether they hold: the fraction of held-out targets inside them (coverage),
# * which β the data prefer: the log evidence ln p(D | α, β), whose maximum is marked,
# * how the held-out error moves with the number of training epochs.
#
# Lines are drawn per value of the other parameters of the grid; seeds are averaged, the band
# showing their spread. The column parameters below name what notebook 01 records (nowhere
# else: `sigma.sweep.plots` takes the names as arguments); point them elsewhere to report on
# another notebook's sweep.

# %%
import matplotlib.pyplot as plt

from sigma.lab.data import IRIS_CLASSES
from sigma.sweep import plots as sweep_plots
from sigma.sweep.table import load_failures, load_sweep

# %% tags=["parameters"]
sweep_dir: str = "reports/sweeps/01_original"  # where the runs are (make sweep)
beta_column: str = "laplace_beta"  # the β axis: noise precision of the error bars
sigma_prefix: str = "sigma_ggn_mean."  # σ per output: the columns <prefix><output>
coverage_column: str = "coverage_95"  # fraction of held-out targets inside ±1.96σ
nominal_coverage: float = 0.95  # the level those bars promise; 0 draws no line
evidence_column: str = "log_evidence"  # ln p(D | α, β), if the notebook records it
error_column: str = "test_rmse"  # held-out error

# %% [markdown]
# ## The runs
#
# One row per finished run: its parameters, then what the notebook recorded (σ per output as
# `<name>.<output>`), and the version (source hash) of the notebook it ran. An empty table
# means the sweep has not been run yet: `make sweep`.

# %%
table = load_sweep(sweep_dir)
print(f"{len(table)} finished runs in {sweep_dir}")
for path, reason in table.attrs["skipped"]:
    print(f"skipped {path}: {reason}")
if table["notebook_sha256"].nunique() > 1:
    print("the runs used more than one version of the notebook: rerun the sweep")
columns = [beta_column, "epochs", coverage_column, evidence_column, error_column]
missing = [c for c in columns if c not in table]
if not any(c.startswith(sigma_prefix) for c in table):
    missing.append(f"{sigma_prefix}*")
if len(table) and missing:
    print(f"not recorded in these runs: {', '.join(missing)} (set the column parameters above)")
table

# %% [markdown]
# Runs that raised are kept apart with their error; the notebook, up to the failing cell, is in
# `failed/<run>/`.

# %%
load_failures(sweep_dir)

# %% [markdown]
# ## The β the evidence prefers
#
# For each setting of the other parameters, the β of largest log evidence, marked on the plots
# against β below (nothing is marked if the notebook does not record the evidence).

# %%
best = sweep_plots.evidence_optimal(table, x=beta_column, evidence=evidence_column)
best

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_evidence_against_beta(table, ax=ax, x=beta_column, y=evidence_column)
plt.show()

# %% [markdown]
# ## Error bars against β
#
# σ_k² = 1/β + g_kᵀA⁻¹g_k with A = αI + βC: the noise term falls as 1/β and so, once β C
# dominates α, does the weight term, so σ should fall about as 1/√β (a slope of −½ here).

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_sigma_against_beta(
    table, ax=ax, x=beta_column, prefix=sigma_prefix, names=IRIS_CLASSES, best=best
)
plt.show()

# %% [markdown]
# Do the bars hold on data the network has not seen? Coverage below the nominal level means
# the bars are too narrow at that β, above it too wide.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_coverage_against_beta(
    table, ax=ax, x=beta_column, y=coverage_column, nominal=nominal_coverage or None, best=best
)
plt.show()

# %% [markdown]
# ## Training length
#
# The held-out error against the number of epochs. The error bars' β does not enter training,
# so the runs are averaged over it (and over seeds).

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_test_error_against_epochs(
    table, ax=ax, x="epochs", y=error_column, average_over=("seed", beta_column)
)
plt.show()
