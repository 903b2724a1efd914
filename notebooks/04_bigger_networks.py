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
# # Bigger networks: structured curvature and the memory it needs
#
# The error bar σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x), A = αI + βC ([docs/math.md](../docs/math.md)) needs
# A⁻¹. Stored in full, A has P² entries: 23 MB for the 1,700 weights of a small MLP, 580 GB for
# the 270,000 weights of a 784-256-256-10 MLP. Each *structure* keeps C in a cheaper form and
# answers the same questions — `predict`, `log_evidence`, `optimize_evidence` — from its
# eigenvalues:
#
# | structure | keeps | memory |
# |---|---|---|
# | `full` | the P×P curvature, eigen-decomposed | P² |
# | `diag` | its exact diagonal | P |
# | `kfac` | one Kronecker product Q ⊗ H per Dense/Conv layer | Σ (D² + C²) |
# | `lowrank` | its top-k eigenpairs, by Lanczos on curvature-vector products; for the GGN by default plus the exact diagonal the low-rank part leaves over ("lowrank+diag"), with `diag=False` the rest as 0 | P·k |
#
# Which weights the posterior covers is a separate choice (`weights=`); `last_layer` below is
# `weights="last_layer"` with `full`: the full curvature of the final Dense layer only, the
# other weights fixed (P_last² memory).
#
# We compare every registered structure, and `last_layer`, on three networks: an MLP and a small CNN on
# scikit-learn's 8×8 digits (classification; `full` is feasible, so it is the reference), and
# a 784-256-256-10 MLP on synthetic regression data (`full` is refused before it allocates).

# %% tags=["parameters"]
hidden_digits: int = 32  # hidden units of the digits MLP (64-32-10: 2,410 weights)
epochs_digits: int = 30  # training epochs of the digits MLP and CNN
cnn_filters: int = 8  # 3×3 filters of the digits CNN (8, with cnn_hidden 32: 2,746 weights)
cnn_hidden: int = 32  # Dense units of the digits CNN after the convolution and pooling
n_synthetic: int = 10000  # training samples of the synthetic regression (784 inputs, 10 outputs)
n_test: int = 1000  # held-out samples of the synthetic regression
hidden_big: int = 256  # units of both hidden layers of the big MLP (256: 269,322 weights)
epochs_big: int = 5  # training epochs of the big MLP
rank: int = 20  # eigenpairs kept by the lowrank structure
ranks: list = [10, 40, 160, 640]  # lowrank ranks compared with full on the digits MLP
batch_size: int = 500  # samples per batch when accumulating curvature and predicting, ≥ 1
max_memory: float = 0.0  # bytes a structure may plan to use (0: 80% of the memory available)
seed: int = 0  # seed for the splits, the synthetic data, the initial weights and training, ≥ 0
metrics_path: str = ""  # where to write metrics.json (empty: do not write)

# %%
import time

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import sigma
from sigma import memory, structures
from sigma.lab import compare
from sigma.sweep.records import save_metrics

started = time.time()
tf.get_logger().setLevel("ERROR")  # one traced graph per fit: TF's retracing notices are noise here
pd.set_option("display.width", 200)
# every registered structure, whoever added it, and full on the last layer's weights
names = [*structures.names(), "last_layer"]
options = {"lowrank": {"rank": rank}}
limit = max_memory if max_memory > 0 else None  # None: sigma.memory's default
columns = [
    "structure",
    "status",
    "P",
    "eigenvalues",
    "sigma_rel_err_median",
    "sigma_rel_err_max",
    "accuracy",
    "nll",
    "ece",
    "coverage_68",
    "coverage_95",
    "alpha",
    "log_evidence",
    "fit_s",
    "predict_s",
    "fit_peak_MB",
    "estimate_MB",
]
x_train, x_test, labels_train, labels_test = sigma.lab.digits_split(seed=seed)
images_train, images_test, _, _ = sigma.lab.digits_split(seed=seed, images=True)
xs_train, xs_test, ys_train, ys_test = sigma.lab.teacher_regression(
    n_synthetic, n_test, n_inputs=784, n_outputs=10, noise=0.1, seed=seed
)
cross_entropy = keras.losses.CategoricalCrossentropy(from_logits=True)
print(
    f"structures: {names}; digits: {len(x_train)} training / {len(x_test)} held-out images; "
    f"synthetic: {n_synthetic} / {n_test} samples of 784 inputs → 10 outputs"
)

# %% [markdown]
# ## An MLP on the digits
# 64 pixels → `hidden_digits` tanh units → 10 logits, softmax cross-entropy, float32. Each
# structure is fitted with the generalised Gauss–Newton, α set by its own evidence optimum, and
# scored on the held-out digits with the probit predictive. The σ columns compare the
# weight-uncertainty σ = sqrt(diag J A⁻¹ Jᵀ) of each logit with full's, every structure at
# full's α.

# %%
mlp = sigma.lab.mlp(64, hidden_digits, 10, activation="tanh", dtype="float32", seed=seed)
sigma.lab.train(
    mlp,
    x_train,
    sigma.lab.one_hot(labels_train, 10),
    epochs=epochs_digits,
    batch_size=32,
    learning_rate=3e-3,
    loss=cross_entropy,
    seed=seed,
)
print(
    f"P = {sigma.num_params(mlp):,}; held-out accuracy of the trained MLP "
    f"{np.mean(mlp.predict(x_test, verbose=0).argmax(1) == labels_test):.3f}"
)

# %%
c_mlp = compare.compare_structures(
    mlp,
    x_train,
    labels_train,
    x_test,
    labels_test,
    likelihood="classification",
    structures=names,
    options=options,
    batch_size=batch_size,
    max_memory=limit,
)
table_mlp = pd.DataFrame(compare.summary(c_mlp, columns))
print(table_mlp.round(4).to_string(index=False))
fig = compare.sigma_scatter(c_mlp, title="digits MLP: σ of each logit against full")

# %% [markdown]
# ### lowrank converges to full as k grows
# The same MLP at full's α: lowrank (+diag, the default) with k eigenpairs keeps the top k
# directions of C exactly and the rest through the remainder of C's diagonal; as k grows the
# remainder shrinks and σ converges to full's (Lanczos steps = products with C, in blocks of
# several vectors per pass over the data).

# %%
sweep = compare.rank_sweep(
    mlp,
    x_train,
    labels_train,
    x_test,
    [k for k in ranks if k <= sigma.num_params(mlp)],
    c_mlp.sigmas["full"],
    alpha=c_mlp.alpha,
    likelihood="classification",
    batch_size=batch_size,
)
print(pd.DataFrame(sweep).round(4).to_string(index=False))

# %% [markdown]
# ### lowrank with and without the diagonal
# Pure lowrank gives every direction outside its top k the bare prior variance 1/α, and its
# evidence sees only k curvature eigenvalues: γ ≤ k, so α = γ/(2E_W) is pulled far below
# full's. lowrank+diag (the default for the GGN, `structure_options={"rank": k}`) gives those
# directions the exact GGN diagonal left over by the low-rank part,
# C ≈ UΛUᵀ + diag(diag(C) − diag(UΛUᵀ)). Below, the same MLP with full, diag, pure lowrank
# (`{"rank": k, "diag": False}`) and lowrank+diag (`{"rank": k, "diag": True}`), k = `rank`:
# the σ error against full at full's α (as above), and the α each one's own evidence picks.

# %%
variants = {"full": "full", "diag": "diag", "lowrank pure": "lowrank", "lowrank+diag": "lowrank"}
c_lr = compare.compare_structures(
    mlp,
    x_train,
    labels_train,
    x_test,
    labels_test,
    likelihood="classification",
    structures=variants,
    options={
        "lowrank pure": {"rank": rank, "diag": False},
        "lowrank+diag": {"rank": rank, "diag": True},
    },
    batch_size=batch_size,
    max_memory=limit,
)
table_lr = pd.DataFrame(
    compare.summary(
        c_lr,
        ["structure", "status", "sigma_rel_err_median", "sigma_rel_err_max", "alpha", "gamma",
         "nll", "ece"],
    )
).set_index("structure")  # fmt: skip
table_lr["alpha_vs_full"] = table_lr["alpha"] / table_lr.loc["full", "alpha"]
print(table_lr.round(4).to_string())
lr = table_lr.loc[["diag", "lowrank pure", "lowrank+diag"]]
print(
    f"median σ error against full (k = {rank}): diag {lr.loc['diag', 'sigma_rel_err_median']:.1%}"
    f", lowrank pure {lr.loc['lowrank pure', 'sigma_rel_err_median']:.1%}, lowrank+diag "
    f"{lr.loc['lowrank+diag', 'sigma_rel_err_median']:.1%} (largest: "
    f"{lr['sigma_rel_err_max'].map('{:.1%}'.format).to_dict()})\n"
    "evidence α relative to full's: "
    f"{lr['alpha_vs_full'].map('{:.3g}×'.format).to_dict()}\n"
    "lowrank+diag's σ error within diag's — median: "
    f"{lr.loc['lowrank+diag', 'sigma_rel_err_median'] <= lr.loc['diag', 'sigma_rel_err_median']}"
    f", largest: {lr.loc['lowrank+diag', 'sigma_rel_err_max'] <= lr.loc['diag', 'sigma_rel_err_max']}"
)
fig = compare.sigma_scatter(c_lr, title=f"digits MLP, k = {rank}: σ of each logit against full")

# %% [markdown]
# ## A small CNN on the digits
# Conv2D(`cnn_filters`, 3×3, relu) → max-pool → Dense(`cnn_hidden`, relu) → 10 logits
# (2,746 weights at the defaults).

# %%
cnn = sigma.lab.small_cnn(
    (8, 8, 1), 10, filters=cnn_filters, hidden=cnn_hidden, dtype="float32", seed=seed
)
sigma.lab.train(
    cnn,
    images_train,
    sigma.lab.one_hot(labels_train, 10),
    epochs=epochs_digits,
    batch_size=32,
    learning_rate=3e-3,
    loss=cross_entropy,
    seed=seed,
)
print(
    f"P = {sigma.num_params(cnn):,}; held-out accuracy of the trained CNN "
    f"{np.mean(cnn.predict(images_test, verbose=0).argmax(1) == labels_test):.3f}"
)

# %%
c_cnn = compare.compare_structures(
    cnn,
    images_train,
    labels_train,
    images_test,
    labels_test,
    likelihood="classification",
    structures=names,
    options=options,
    batch_size=batch_size,
    max_memory=limit,
)
table_cnn = pd.DataFrame(compare.summary(c_cnn, columns))
print(table_cnn.round(4).to_string(index=False))
fig = compare.sigma_scatter(c_cnn, title="digits CNN: σ of each logit against full")

# %% [markdown]
# ## A 784-256-256-10 MLP on 10,000 synthetic samples
# Regression on targets from a random teacher network with noise σ = 0.1 (β = 100). Before any
# fit, each structure estimates what it needs for this model and compares it with
# 80% of the memory available now; `full` is refused with an error naming the structures that
# fit.

# %%
big = sigma.lab.mlp(
    784, (hidden_big, hidden_big), 10, activation="relu", dtype="float32", seed=seed
)
estimates = {
    name: structures.estimate(
        name,
        big,
        structure_options=options.get(name),
        n_data=n_synthetic,
        n_outputs=10,
        batch_size=batch_size,
    )
    for name in names
}
print(
    f"P = {sigma.num_params(big):,}; estimated memory per structure:",
    {name: memory.format_bytes(b) for name, b in estimates.items()},
)

# %%
history = sigma.lab.train(
    big, xs_train, ys_train, epochs=epochs_big, batch_size=128, learning_rate=1e-3, seed=seed
)
beta_ml = ys_train.size / (2 * sigma.data_error(big, xs_train, ys_train))
print(
    f"training MSE {history.history['loss'][-1]:.4f}; β at the training residuals "
    f"NK/(2E_D) = {beta_ml:.1f} (the data's noise: β = 100)"
)

# %% [markdown]
# The evidence cannot set β here: diag and kfac count more well-determined weights γ than
# there are observed values NK (P = 269,322 > NK = 100,000), and MacKay's β ← (NK − γ)/(2E_D)
# turns negative. So β is held at the training residuals' NK/(2E_D) for every structure and
# only α is optimised.

# %%
c_big = compare.compare_structures(
    big,
    xs_train,
    ys_train,
    xs_test,
    ys_test,
    structures=names,
    options=options,
    batch_size=batch_size,
    beta=beta_ml,
    evidence={"fix_beta": True},
    max_memory=limit,
)
table_big = pd.DataFrame(compare.summary(c_big, columns))
print(table_big.round(4).to_string(index=False))
print("\n".join(f"{name}: {note}" for name, note in c_big.notes.items()))

# %% [markdown]
# ## What the tables say
# **Memory.** On the 784-256-256-10 MLP `full` would need P² numbers and is refused before it
# allocates, with an error naming the structures that fit (printed above). For the others, the
# memory each estimated before fitting against the peak measured while it fitted, with its fit
# time, and its held-out 95% coverage and NLL (β held at the residuals' NK/(2E_D), α from the
# evidence):

# %%
big_rows = table_big.set_index("structure")
fitted = big_rows[big_rows["status"] == "ok"]
fitted[["estimate_MB", "fit_peak_MB", "fit_s", "coverage_95", "nll"]].round(3)

# %% [markdown]
# **Against `full`.** On the digits networks, where `full` fits, every structure's σ at full's
# α against full's σ (median relative error; 0 for `full` itself; lowrank+diag at each rank:
# the rank sweep above):

# %%
pd.concat(
    {
        "digits MLP": table_mlp.set_index("structure")["sigma_rel_err_median"],
        "digits CNN": table_cnn.set_index("structure")["sigma_rel_err_median"],
    },
    axis=1,
).round(4)

# %% [markdown]
# **Pure low rank against lowrank+diag** (k as set above): σ's error against `full` and the
# evidence's α as a multiple of full's:

# %%
table_lr[["sigma_rel_err_median", "alpha_vs_full"]].round(4)

# %% [markdown]
# **Held out**, each structure at its own evidence α (digits MLP):

# %%
mlp_rows = table_mlp.set_index("structure")
mlp_rows.loc[mlp_rows["status"] == "ok", ["accuracy", "nll", "ece"]].round(4)

# %% [markdown]
# last_layer holds the other weights fixed, so its σ leaves out their uncertainty; pure lowrank
# gives every direction outside its top k the prior variance 1/α with an α its evidence sets
# from at most k well-determined directions (γ ≤ k), which is why its α sits far from full's;
# lowrank+diag brings the left-over curvature back through the diagonal.

# %%
record = save_metrics(
    metrics_path,
    dict(
        structures=names,
        digits_mlp=table_mlp.set_index("structure").to_dict(orient="index"),
        digits_cnn=table_cnn.set_index("structure").to_dict(orient="index"),
        big_mlp=table_big.set_index("structure").to_dict(orient="index"),
        lowrank_rank_sweep=sweep,
        lowrank_variants=table_lr.to_dict(orient="index"),
        big_mlp_full_refused="full" in c_big.notes,
    ),
)
print(f"done in {time.time() - started:.0f} s", f"→ {metrics_path}" if metrics_path else "")
