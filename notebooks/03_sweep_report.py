# %% [markdown]
# # Sweep report: σ, coverage and evidence across β and epochs
#
# `make sweep` runs the original notebook once per point of a parameter grid
# (`sweeps/beta_epochs.yaml`), each run in its own folder with a `metrics.json`. This notebook
# reads them all back into one table and asks what the sweep says:
#
# * how the error bars σ of each output move with the noise precision β,
# * whether they hold: the fraction of held-out targets inside them (coverage),
# * which β the data prefer: the log evidence ln p(D | α, β), whose maximum is marked,
# * how the held-out error moves with the number of training epochs.
#
# Lines are drawn per value of the other parameters of the grid; seeds are averaged, the band
# showing their spread.

# %%
import matplotlib.pyplot as plt

from sigma import runs, sweep_plots

# %% tags=["parameters"]
sweep_dir: str = "reports/sweeps/01_original"  # where the runs are (make sweep)
nominal_coverage: float = 0.954  # coverage expected of ±2σ bars; 0 draws no line

# %% [markdown]
# ## The runs
#
# One row per finished run: its parameters, then what the notebook recorded. An empty table
# means the sweep has not been run yet: `make sweep`.

# %%
table = runs.load_sweep(sweep_dir)
print(f"{len(table)} finished runs in {sweep_dir}")
table

# %% [markdown]
# Runs that raised are kept apart, with their error (the full notebook is next to it in
# `failed/<run>/`).

# %%
runs.load_failures(sweep_dir)

# %% [markdown]
# ## The β the evidence prefers
#
# For each setting of the other parameters, the β of largest log evidence. It is marked on the
# plots against β below.

# %%
best = sweep_plots.evidence_optimal(table)
best

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_evidence_against_beta(table, ax=ax)
plt.show()

# %% [markdown]
# ## Error bars against β
#
# σ² = 1/β + gᵀA⁻¹g: the noise term shrinks as β grows while the weight term depends on how
# the curvature is scaled by β, so σ need not fall as fast as 1/√β.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_sigma_against_beta(table, ax=ax, best=best)
plt.show()

# %% [markdown]
# Do the bars hold on data the network has not seen? Coverage below the nominal level means
# the bars are too narrow for that β.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_coverage_against_beta(table, ax=ax, nominal=nominal_coverage or None, best=best)
plt.show()

# %% [markdown]
# ## Training length
#
# The held-out error against the number of epochs, one line per β.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sweep_plots.plot_test_error_against_epochs(table, ax=ax)
plt.show()
