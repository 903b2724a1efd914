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
# # Using automatic differentiation to compute σ — the original notebook, done right
#
# The original notebook ([docs/original-notebook.md](../docs/original-notebook.md)) trained a 4-4-3 Keras network on
# Iris, took the Hessian of the loss and the gradient of each output with respect to the
# weights, and combined them into an error bar σ with an arbitrary β = 10. This notebook
# follows it cell by cell in TensorFlow 2 / Keras 3, then shows its three defects and fixes
# them (conventions: [docs/math.md](../docs/math.md)):
#
# 1. its output gradients were taken at **re-initialised** weights, not the trained ones;
# 2. its Hessian is that of Keras' **mean** loss, so its β = 10 is not a noise precision;
# 3. its formula is not an error bar: it drops the prior, the off-diagonal curvature and the
#    noise. The Laplace error bar is σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x), A = αI + βC.

# %% tags=["parameters"]
beta: float = 10.0  # the original's β (of Keras' mean squared error), > 0
epochs: int = 20  # training epochs (the original: 20), ≥ 1
seed: int = 0  # seed for the split, the initial weights and training, ≥ 0
hidden_units: int = 4  # sigmoid units in the hidden layer (the original: 4), ≥ 1
test_size: float = 0.33  # fraction of Iris held out (the original: 0.33), in (0, 1)
batch_size: int = 1  # training batch size (the original: 1), ≥ 1
alpha: float = 1.0  # prior precision α of the Laplace error bar, ≥ 0
laplace_beta: float = 0.0  # noise precision β of the Laplace error bar, ≥ 0 (0: from the residuals)
metrics_path: str = ""  # where to write metrics.json (empty: do not write)

# %%
import time

import keras
import numpy as np
import tensorflow as tf

import sigma
from sigma.sweep.records import save_metrics

started = time.time()
print("tensorflow", tf.__version__, "| keras", keras.__version__)

# %% [markdown]
# ## Load Iris and make the targets one-hot
# Same split sizes as the original (100 training, 50 test samples at `test_size = 0.33`),
# stratified and seeded so the run is reproducible.

# %%
x_train, x_test, y_train, y_test = sigma.lab.iris_split(test_size=test_size, seed=seed)
n_train, n_outputs = y_train.shape
print(f"{n_train} train samples, {len(x_test)} test samples, {n_outputs} outputs")

# %% [markdown]
# ## Train the network of the original
# 4 inputs → `hidden_units` sigmoid units → 3 linear outputs, mean squared error, RMSprop,
# batch size 1.

# %%
model = sigma.lab.mlp(4, hidden_units, n_outputs, activation="sigmoid", seed=seed)
history = sigma.lab.train(
    model,
    x_train,
    y_train,
    epochs=epochs,
    batch_size=batch_size,
    seed=seed,
    validation_data=(x_test, y_test),
    metrics=["categorical_accuracy"],  # the original's "accuracy" for this loss
)
model.summary()
test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test loss (MSE) {test_loss:.4f}, test accuracy {test_accuracy:.3f}")

# %% [markdown]
# ## The Hessian of the loss with nested `GradientTape`s
# The inner tape gives the gradient of the loss; the outer tape's `jacobian` differentiates all
# of its P components at once. This is the original's computation, written inline: the loss is
# Keras' *mean* squared error over the training set.

# %%
mse = tf.keras.losses.MeanSquaredError()
with tf.GradientTape(persistent=True) as outer:
    with tf.GradientTape() as inner:
        loss = mse(y_train, model(x_train.astype("float32"), training=False))
    grads = inner.gradient(loss, model.trainable_variables)
    grad_flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
hessian_mean_loss = np.concatenate(
    [
        tf.reshape(j, (grad_flat.shape[0], -1)).numpy()
        for j in outer.jacobian(grad_flat, model.trainable_variables)
    ],
    axis=1,
)
del outer
print("P =", hessian_mean_loss.shape[0], "weights; Hessian", hessian_mean_loss.shape)

# %% [markdown]
# `sigma.hessian` computes the same thing, vectorised and traced once, but for the **summed**
# data error E_D = ½ Σ (f − t)² of [docs/math.md](../docs/math.md). The mean loss is L = E_D · 2/(N K), so the two
# Hessians differ by exactly that factor:

# %%
hessian_ed = sigma.hessian(model, x_train, y_train)
scale = 2.0 / (n_train * n_outputs)
rel = np.linalg.norm(hessian_mean_loss - scale * hessian_ed) / np.linalg.norm(hessian_mean_loss)
print(f"‖H_mean − 2/(NK)·H_ED‖ / ‖H_mean‖ = {rel:.2e}  (float32 round-off)")

# %% [markdown]
# ## The gradient of each output with respect to every weight
# At the first training example, as the original. `sigma.output_jacobian` returns
# ∂f_k(x_n)/∂w for all n, k at once: shape (N, K, P).

# %%
grads_trained = sigma.output_jacobian(model, x_train[:1])[0]
print("output gradients", grads_trained.shape)

# %% [markdown]
# ## σ with the original formula and β = 10
# s_k = Σ_j g_kj² / (β h_jj), with h_jj the diagonal of the mean-loss Hessian. The original
# never checked that h_jj > 0:

# %%
h_diag = np.diag(hessian_mean_loss).astype(np.float64)
print(f"{np.sum(h_diag <= 0)} of {h_diag.size} diagonal entries are zero or negative")
seed_trained = sigma.lab.seed_sigma(h_diag, grads_trained, beta=beta, strict=False)
print("original formula, trained weights:", np.round(seed_trained, 4))

# %% [markdown]
# ## Defect 1: the original took its output gradients at re-initialised weights
# Its `evaluate_output_j_gradients_wrt_weights` opened a new session and ran
# `tf.initialize_all_variables()` before evaluating the gradients — so they were taken at fresh
# random weights, not the trained ones. Side by side:

# %%
grads_reinit = sigma.output_jacobian(
    sigma.lab.reinitialised_copy(model, seed=seed + 1), x_train[:1]
)[0]
seed_reinit = sigma.lab.seed_sigma(h_diag, grads_reinit, beta=beta, strict=False)
for k, name in enumerate(sigma.lab.IRIS_CLASSES):
    print(f"{name:>10}: trained {seed_trained[k]:10.4f}   re-initialised {seed_reinit[k]:10.4f}")

# %% [markdown]
# ## Defect 2: the original's β belongs to the mean loss
# Its Hessian is (2/(N K)) ∇²E_D, so its β = 10 stands for β_eff = 2β/(N K) in the summed
# convention: a noise standard deviation 1/√β_eff of several units on one-hot targets. That is
# why its σ came out near 2 "and needed a bigger β".

# %%
beta_summed = sigma.lab.summed_beta(beta, n_train, n_outputs)
print(
    f"original β = {beta:g}  →  β = {beta_summed:.4f} in the summed convention "
    f"(noise σ = {beta_summed**-0.5:.2f})"
)

# %% [markdown]
# ## Defect 3: the proper Laplace error bar
# σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x) with A = αI + βC — the full curvature, a prior, and the
# noise term. Here β is estimated from the training residuals, β = N K / (2 E_D) (the
# maximum-likelihood noise precision; notebook 02 chooses α and β by the evidence), unless the
# `laplace_beta` parameter fixes it.

# %%
e_d = sigma.data_error(model, x_train, y_train)
beta_fit = laplace_beta if laplace_beta > 0 else n_train * n_outputs / (2.0 * e_d)
print(f"E_D = {e_d:.3f}, β = {beta_fit:.3f} (noise σ = {beta_fit**-0.5:.3f}), α = {alpha:g}")

# %% [markdown]
# With the Gauss–Newton matrix C = G (always positive semi-definite):

# %%
laplace_ggn = sigma.Laplace(model, x_train, y_train, curvature="ggn", alpha=alpha, beta=beta_fit)
mean_test, std_ggn = laplace_ggn.predict(x_test)
print(laplace_ggn)
print("mean σ per output (GGN):", np.round(std_ggn.mean(axis=0), 4))

# %% [markdown]
# With the exact Hessian C = H. Away from an exact minimum H can have negative eigenvalues,
# and A = αI + βH is a valid precision only if α exceeds β·|λ_min|:

# %%
eig_h = np.linalg.eigvalsh(hessian_ed)
alpha_h = max(alpha, 1.01 * beta_fit * max(0.0, -eig_h.min()))
print(
    f"H: {np.sum(eig_h < 0)} negative eigenvalues, smallest {eig_h.min():.4g}; α used = {alpha_h:.4g}"
)
laplace_h = sigma.Laplace(
    model, x_train, y_train, curvature="hessian", alpha=alpha_h, beta=beta_fit
)
_, std_h = laplace_h.predict(x_test)
print("mean σ per output (Hessian):", np.round(std_h.mean(axis=0), 4))

# %% [markdown]
# The three σ of the first training example, side by side (original formula at the trained
# weights, Laplace with Gauss–Newton at α = `alpha`, Laplace with the exact Hessian at the
# larger α its negative eigenvalues force — so the last two differ in their prior too):

# %%
_, std_first = laplace_ggn.predict(x_train[:1])
_, std_first_h = laplace_h.predict(x_train[:1])
for k, name in enumerate(sigma.lab.IRIS_CLASSES):
    print(
        f"{name:>10}: original {seed_trained[k]:9.4f}   Laplace GGN {std_first[0, k]:.4f}"
        f"   Laplace Hessian {std_first_h[0, k]:.4f}"
    )

# %% [markdown]
# ## Every test point: prediction ± 2σ against the targets

# %%
fig = sigma.lab.plots.prediction_bands(
    mean_test,
    std_ggn,
    y_test,
    names=list(sigma.lab.IRIS_CLASSES),
    title=f"Laplace (Gauss–Newton), α = {alpha:g}, β = {beta_fit:.3g}",
)

# %%
inside_95 = np.mean(np.abs(y_test - mean_test) <= 1.96 * std_ggn)
rmse = float(np.sqrt(np.mean((y_test - mean_test) ** 2)))
print(f"test RMSE {rmse:.4f}; {inside_95:.1%} of test targets within ±1.96σ (GGN)")

# %%
metrics = save_metrics(
    metrics_path,
    dict(
        sigma_seed_trained=seed_trained,
        sigma_seed_reinitialised=seed_reinit,
        beta_summed=beta_summed,
        beta_laplace=beta_fit,
        sigma_ggn_mean=std_ggn.mean(axis=0),
        sigma_hessian_mean=std_h.mean(axis=0),
        log_evidence=laplace_ggn.log_evidence(),
        gamma=laplace_ggn.gamma,
        test_rmse=rmse,
        test_accuracy=test_accuracy,
        coverage_95=inside_95,
    ),
)
print(sorted(metrics))
