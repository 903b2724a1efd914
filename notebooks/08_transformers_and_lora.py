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
# # Transformers and LoRA: σ for a sequence classifier
#
# The earlier notebooks put error bars on MLPs and a small CNN. Here the network is a
# transformer: token and position embeddings, self-attention (`keras.layers.MultiHeadAttention`,
# whose four projections are `EinsumDense` layers), layer normalisation, a feed-forward block,
# mean pooling and a linear head. sigma handles it with the same call as an MLP; what changes
# is *how* each layer's curvature is computed ([docs/math.md §6.1](../docs/math.md)):
#
# - an `EinsumDense` projection is a matrix acting at every position of the sequence, so
#   KFAC keeps it as Q ⊗ H with the positions counted as extra samples (`positions="expand"`);
# - the `Embedding` table is a matrix acting on one-hot rows that are never formed: its input
#   factor Q is diagonal (the token counts), and **a token never seen in training keeps the
#   prior's variance 1/α**;
# - `LayerNormalization` and any custom layer keep their exact GGN block.
#
# Then the recipe of Yang et al. (2024), **Laplace-LoRA**: Keras' LoRA adapters
# (`layer.enable_lora(rank)`) fine-tuned on a new task with the base frozen, and a Laplace
# posterior over the adapters alone (`sigma.Laplace(..., weights=adapters)`).
#
# Everything is generated in code (`sigma/lab/sequences.py`; nothing is downloaded). The task:
# sentences of 24 tokens from a vocabulary of 256 ids of which only 192 ever occur in
# training; filler tokens follow a random bigram grammar, and two *marker* tokens (each from
# group A or group B) are written over two random positions. The class reads the two markers
# **in order**: A·A, A·B, B·A or B·B — telling A·B from B·A needs the positions. Two kinds of
# input the network never saw:
#
# - **shuffled** — the test sentences with their tokens permuted: the same tokens, the grammar
#   broken;
# - **out of vocabulary** — sentences of the 64 ids no training sentence uses: valid rows of
#   the embedding table that training never moved from their random initial values.
#
# The measures: accuracy, NLL and calibration of the softmax against sigma's predictive on
# held-out sentences, and how well each one's uncertainty (predictive entropy, or sigma's logit
# σ) tells held-out sentences from each unfamiliar set (AUROC: 1 perfect, 0.5 chance).

# %% tags=["parameters"]
seed: int = 0  # seed of the language, the data sets, the initial weights and training, ≥ 0
vocab_size: int = 256  # rows of the embedding table (token ids 0 … vocab_size − 1), ≥ 2
vocab_used: int = 192  # ids the training sentences use (the rest: out of vocabulary), ≥ 1
length: int = 24  # tokens per sentence (2 of them markers), ≥ 2
n_markers: int = 8  # marker tokens in each of the groups A and B, ≥ 1
n_train: int = 3000  # training sentences of the base task, ≥ 1
n_validation: int = 500  # held-out sentences of each task that choose sigma's temperature, ≥ 1
n_test: int = 500  # test sentences of each task (and sentences in each unfamiliar set), ≥ 1
label_noise: float = 0.0  # fraction of labels replaced by random classes (every set), in [0, 1]
width: int = 32  # embedding width, the attention's model dimension, ≥ 1
heads: int = 2  # attention heads (each of width / heads), ≥ 1
feed_forward: int = 64  # units of the feed-forward block's hidden layer, ≥ 1
blocks: int = 1  # transformer blocks, ≥ 1
epochs: int = 15  # training epochs of the base task (Adam, cosine-decayed step), ≥ 1
batch_size: int = 64  # minibatch size of every training run, ≥ 1
learning_rate: float = 0.003  # Adam's initial step, base training and LoRA fine-tuning, > 0
structure: str = "kfac"  # sigma's structure for both posteriors
prior: str = "layer"  # sigma's prior groups: one α per layer
positions: str = "expand"  # KFAC's positions: "expand" (positions as samples) or "reduce"
curvature: str = "ggn"  # "ggn" (exact Gauss–Newton) or "ggn_mc" (one sampled label per input)
link: str = "mean_field"  # sigma's link to probabilities: probit, mc, mean_field, …
temperatures: list = [1.0, 0.1, 0.01, 0.001, 0.0001]  # likelihood temperatures T scanned
n_finetune: int = 500  # training sentences of the fine-tuning task, ≥ 1
finetune_epochs: int = 20  # epochs of LoRA fine-tuning, ≥ 1
lora_rank: int = 4  # rank of every LoRA adapter, ≥ 1
metrics_path: str = ""  # where to write metrics.json (empty: do not write)

# %%
import time

import keras
import numpy as np
import pandas as pd

import sigma
from sigma.lab import sequences
from sigma.lab.models import train
from sigma.sweep.records import save_metrics

started = time.time()
pd.set_option("display.width", 200)
pd.set_option("display.precision", 3)
language = sequences.Language(vocab_size, vocab_used, length, n_markers, seed=seed)
x_train, labels_train = language.sample(n_train, label_noise=label_noise, seed=seed + 1)
x_val, labels_val = language.sample(n_validation, label_noise=label_noise, seed=seed + 2)
x_test, labels_test = language.sample(n_test, label_noise=label_noise, seed=seed + 3)
sets = {
    "test": x_test,
    "shuffled": sequences.shuffled(x_test, seed=seed + 4),
    "out of vocabulary": sequences.out_of_vocabulary(language, n_test, seed=seed + 5),
}
options = dict(
    likelihood="classification",
    structure=structure,
    prior=prior,
    curvature=curvature,
    structure_options={"positions": positions} if structure in ("kfac", "ekfac") else None,
)
print(
    f"{n_train} training, {n_validation} validation and {n_test} test sentences of {length} "
    f"tokens\nclasses {sequences.CLASSES}: {np.bincount(labels_train, minlength=4).tolist()} "
    "training sentences"
)

# %% [markdown]
# One test sentence of each class; the same sentences shuffled, with the class the rule gives
# their new order; two out-of-vocabulary sentences. A marker is shown as its group and index
# (A3, B0), every other token as its id:

# %%
one_of_each = [int(np.flatnonzero(labels_test == c)[0]) for c in range(4)]
sequences.examples(
    language,
    {
        "test": (x_test[one_of_each], labels_test[one_of_each]),
        "shuffled": (
            sets["shuffled"][one_of_each],
            sequences.read_labels(language, sets["shuffled"][one_of_each]),
        ),
        "out of vocabulary": (sets["out of vocabulary"][:2], None),
    },
)

# %% [markdown]
# ## The transformer and its training
#
# Token embedding (`vocab_size` × `width`) plus a learned vector per position; `blocks`
# post-norm transformer blocks — self-attention with `heads` heads and a residual, then
# LayerNormalization; a GELU feed-forward layer of `feed_forward` units and a residual, then
# LayerNormalization; mean pooling over the positions and a Dense head with 4 linear logits.
# Trained on the softmax cross-entropy (`from_logits=True`) with Adam.

# %%
model = sequences.transformer(
    vocab_size, length, width=width, heads=heads, feed_forward=feed_forward, blocks=blocks,
    seed=seed,
)  # fmt: skip
cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
tic = time.time()
history = train(
    model, x_train, labels_train, loss=cross_entropy, optimizer="adam", schedule="cosine",
    metrics=["accuracy"], epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
    seed=seed,
)  # fmt: skip
train_seconds = time.time() - tic
test_accuracy = np.mean(model.predict(x_test, verbose=0).argmax(1) == labels_test)
print(
    f"P = {sigma.num_params(model):,} weights, trained in {train_seconds:.0f} s: training "
    f"accuracy {history.history['accuracy'][-1]:.3f}, test accuracy {test_accuracy:.3f}"
)

# %% [markdown]
# ## Which layer takes which path
#
# `sigma.curvature.engine(model).layer_plan(x)` probes the model once on a few inputs and says
# how the layer-wise structures (`diag`, `kfac`, `ekfac`) treat each layer: **fast** — the layer
# is a matrix acting at some number of positions, and its curvature is built from the inputs ã
# and output sensitivities s recorded in one forward and K backward passes; **generic** — the
# exact per-sample Jacobian of the layer's own weights, by automatic differentiation;
# **from the capture** — a normalisation layer whose exact Jacobian is rebuilt from the same
# recorded inputs.

# %%
pd.DataFrame(sigma.curvature.engine(model).layer_plan(x_train[:8]).table()).astype(
    {"positions": "Int64"}
).set_index("layer")

# %% [markdown]
# The four projections of the attention are `EinsumDense` layers on the fast path, with the
# sentence's 24 tokens as positions; so are the Embedding (the one-hot rows of the 24 tokens)
# and both feed-forward Dense layers. The head sees the pooled vector: one position. The two
# LayerNormalizations and the position embedding (a custom layer: a learned 24 × 32 table
# added to its input) keep their exact blocks.
#
# ## A Laplace over every weight
#
# KFAC over all weights with `positions="expand"` (every position a sample of Q and H; §6.1),
# one α per layer by the evidence (`optimize_evidence()`), at the trained weights. (The other
# choice, `"reduce"`, sums each sample's sensitivities over the positions before the outer
# product; on this model it gives the attention's key projection no curvature at all — its
# sensitivities sum to zero over the positions, because the softmax over the keys ignores a
# shift common to all of them — and the evidence then drives that layer's α towards 0.)

# %%
tic = time.time()
la = sigma.Laplace(model, x_train, labels_train, **options).optimize_evidence()
fit_seconds = time.time() - tic
print(
    f"fitted, α by the evidence, in {fit_seconds:.1f} s: γ = {la.gamma:.0f} of "
    f"P = {la.n_params:,} weights are determined by the data"
)
evidence_alpha = dict(zip(la.prior_groups, np.atleast_1d(la.alpha).tolist(), strict=True))
pd.DataFrame(
    {"P": la.prior.sizes, "α": np.atleast_1d(la.alpha), "γ": la.gammas},
    index=pd.Index(la.prior_groups, name="group"),
)

# %% [markdown]
# (A prior group is named after its layer's Keras path below the model: the projections of
# the attention block are `attention_0/query`, ..., so with `blocks` > 1 every block's
# projections get an α of their own.)
#
# The rows of the embedding table of the 64 ids no training sentence uses were never moved by
# training (their gradient is zero; their norm is that of the initialisation) and the data say
# nothing about them: their posterior variance is the prior's 1/α exactly. The rows of the
# tokens in use are only a little below it on average: most directions of a row do not change
# the logits.

# %%
pd.DataFrame(sequences.embedding_rows(la, language)).set_index("ids")

# %% [markdown]
# ### In distribution, shuffled, out of vocabulary
#
# The trained network's softmax against sigma's predictive: the logits are
# N(f(x), J A⁻¹ Jᵀ) and the `link` (here Lu et al.'s mean field) turns them into probabilities —
# what `la.predict_proba(x, method=link)` returns. On the held-out test sentences:

# %%
tic = time.time()
predictions = {
    "softmax": sequences.softmax_predictive(model, sets),
    "sigma, evidence": sequences.laplace_predictive(la, sets, method=link),
}
predict_seconds = time.time() - tic
pd.DataFrame(sequences.in_distribution(predictions, labels_test)).set_index("method")

# %% [markdown]
# How each score tells the test sentences from the unfamiliar ones: AUROC, and FPR95 (the
# fraction of test sentences flagged when 95% of the unfamiliar ones are):

# %%
detected = pd.DataFrame(sequences.detection(predictions))
detected.pivot_table(index=["method", "score"], columns="data", values=["auroc", "fpr95"])

# %% [markdown]
# The shuffled sentences are not told apart by anything. They are not new to this classifier:
# it reads the two markers, which a shuffle keeps, and it is as right on the shuffled sentences
# as on the real ones, judged by the class the rule gives their new order:

# %%
shuffled_labels = sequences.read_labels(language, sets["shuffled"])
shuffled_accuracy = np.mean(
    predictions["softmax"]["shuffled"]["probs"].argmax(1) == shuffled_labels
)
print(f"softmax accuracy on the shuffled sentences: {shuffled_accuracy:.3f}")

# %% [markdown]
# ### The likelihood's temperature
#
# The evidence alone leaves this classifier under-confident in distribution, as it did the
# digits classifier of notebook 06. A tempered likelihood p(y | f)^(1/T) (`la.temperature = T`:
# no refit; the α_g again by the evidence of the tempered model) removes variance along the
# weight directions the data determine and keeps the prior's along the others. A scan over T;
# T is chosen by the NLL of held-out validation sentences:

# %%
tic = time.time()
scan_rows, scan_predictions = sequences.temperature_scan(
    la, sets, labels_test, x_val, labels_val, temperatures, method=link
)
scan_seconds = time.time() - tic
scan = pd.DataFrame(scan_rows).set_index("temperature")
scan.index = [f"{t:g}" for t in scan.index]
scan

# %%
best_t = temperatures[int(np.nanargmin(scan["validation NLL"].to_numpy()))]
predictions[f"sigma, tempered (T = {best_t:g})"] = scan_predictions[best_t]
print(f"T = {best_t:g} has the lowest validation NLL (the scan took {scan_seconds:.0f} s)")

# %% [markdown]
# ### The uncertainty on each set
#
# Top: the predictive entropy of each method on each set. Bottom: sigma's mean logit σ (log
# scale; the softmax has none).

# %%
fig = sequences.plot_uncertainty(predictions)

# %% [markdown]
# ## Laplace-LoRA: a posterior over the adapters alone
#
# A new task on the same language: the class now reads the markers **right to left** (an A·B
# sentence is labelled B·A and the other way round; A·A and B·B are unchanged), and only
# `n_finetune` labelled sentences. Keras' LoRA (`layer.enable_lora(lora_rank)`: kernel
# W₀ + A B, A of shape D × r and B of shape r × C, B starting at zero) on the four attention
# projections and both feed-forward layers; every other weight frozen (base kernels, biases,
# embeddings, norms, head). The adapters are then the only trainable variables, and the Laplace
# covers them alone: `sigma.Laplace(model, x, y, weights=adapters, structure=structure)`.

# %%
x_tune, labels_tune = language.sample(
    n_finetune, rule="reversed", label_noise=label_noise, seed=seed + 6
)
x_tune_val, labels_tune_val = language.sample(
    n_validation, rule="reversed", label_noise=label_noise, seed=seed + 7
)
x_tune_test, labels_tune_test = language.sample(
    n_test, rule="reversed", label_noise=label_noise, seed=seed + 8
)
base_accuracy = np.mean(model.predict(x_tune_test, verbose=0).argmax(1) == labels_tune_test)
print(f"the base model on the reversed task: test accuracy {base_accuracy:.3f}")

# %%
adapters = sequences.enable_lora(model, lora_rank, seed=seed)
tic = time.time()
tune_history = train(  # compiled again: the adapters alone are trainable now
    model, x_tune, labels_tune, loss=cross_entropy, optimizer="adam", schedule="cosine",
    epochs=finetune_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
)  # fmt: skip
tune_seconds = time.time() - tic
tuned_accuracy = np.mean(model.predict(x_tune_test, verbose=0).argmax(1) == labels_tune_test)
print(
    f"{len(adapters)} adapter variables, {sum(int(np.prod(v.shape)) for v in adapters):,} "
    f"weights, fine-tuned in {tune_seconds:.0f} s: test accuracy {tuned_accuracy:.3f}"
)

# %% [markdown]
# The layer plan of the adapters: each adapter matrix is a block of its own on the fast path.
# For A the input is the layer's own and the sensitivity the layer's times Bᵀ; for B the input
# is the layer's input times A — and the heads of the query, key and value projections become
# positions of B (24 tokens × 2 heads = 48).

# %%
pd.DataFrame(sigma.curvature.engine(model).layer_plan(x_tune[:8]).table()).set_index("layer")

# %%
tic = time.time()
la_lora = sigma.Laplace(model, x_tune, labels_tune, weights=adapters, **options)
la_lora.optimize_evidence()
lora_fit_seconds = time.time() - tic
print(
    f"fitted, α by the evidence, in {lora_fit_seconds:.1f} s: γ = {la_lora.gamma:.0f} of "
    f"P = {la_lora.n_params:,} adapter weights are determined by the data"
)
lora_evidence_alpha = dict(
    zip(la_lora.prior_groups, np.atleast_1d(la_lora.alpha).tolist(), strict=True)
)
pd.DataFrame(
    {"P": la_lora.prior.sizes, "α": np.atleast_1d(la_lora.alpha), "γ": la_lora.gammas},
    index=pd.Index(la_lora.prior_groups, name="group"),
)

# %% [markdown]
# The same measures on the reversed task's test sentences, their shuffles and the same
# out-of-vocabulary sentences; the temperature scanned as above, on validation sentences of the
# reversed task:

# %%
tune_sets = {
    "test": x_tune_test,
    "shuffled": sequences.shuffled(x_tune_test, seed=seed + 4),
    "out of vocabulary": sets["out of vocabulary"],
}
tic = time.time()
lora_predictions = {
    "softmax, LoRA": sequences.softmax_predictive(model, tune_sets),
    "sigma, LoRA, evidence": sequences.laplace_predictive(la_lora, tune_sets, method=link),
}
lora_scan_rows, lora_scan_predictions = sequences.temperature_scan(
    la_lora, tune_sets, labels_tune_test, x_tune_val, labels_tune_val, temperatures, method=link
)
lora_scan_seconds = time.time() - tic
lora_scan = pd.DataFrame(lora_scan_rows).set_index("temperature")
lora_scan.index = [f"{t:g}" for t in lora_scan.index]
lora_best_t = temperatures[int(np.nanargmin(lora_scan["validation NLL"].to_numpy()))]
lora_predictions[f"sigma, LoRA, tempered (T = {lora_best_t:g})"] = lora_scan_predictions[
    lora_best_t
]
print(f"T = {lora_best_t:g} has the lowest validation NLL ({lora_scan_seconds:.0f} s)")
lora_scan

# %%
pd.DataFrame(sequences.in_distribution(lora_predictions, labels_tune_test)).set_index("method")

# %%
lora_detected = pd.DataFrame(sequences.detection(lora_predictions))
lora_detected.pivot_table(index=["method", "score"], columns="data", values=["auroc", "fpr95"])

# %%
fig = sequences.plot_uncertainty(lora_predictions)

# %% [markdown]
# The adapters' posterior holds the embedding table fixed: the rows of the unseen ids, whose
# prior variance lets the posterior over all weights flag them, are not part of it. To the
# adapters an unseen token is only what it does to the features they read — here somewhat
# smaller than on real sentences (the mean norm per token of the inputs of the attention and of
# the feed-forward layer):

# %%
pd.DataFrame(sequences.feature_norms(model, tune_sets)).set_index("data")

# %% [markdown]
# ## Results
#
# Every method on its own task's test sentences (the base task for the first three rows, the
# reversed task for the LoRA rows), and the AUROC of the predictive entropy — and of sigma's
# logit σ — against each unfamiliar set:

# %%
results = pd.DataFrame(
    sequences.summary(
        {**predictions, **lora_predictions},
        {
            **dict.fromkeys(predictions, labels_test),
            **dict.fromkeys(lora_predictions, labels_tune_test),
        },
    )
).set_index("method")
results.style.format(precision=3, na_rep="—")

# %% [markdown]
# ## What to conclude
#
# At the defaults (one seed; every number is in the tables above):
#
# - **A transformer takes sigma's fast path almost everywhere.** Of the 17,636 weights, all but
#   the 896 of the two LayerNormalizations and the position table sit in Kronecker blocks: the
#   Embedding's with a diagonal input factor (the token counts), the attention's `EinsumDense`
#   projections and the feed-forward layers with the 24 tokens as positions. The KFAC fit with
#   the evidence took 6–13 s on 3,000 sentences (a shared 2-core machine, more or less busy),
#   most of it tracing.
# - **Out of vocabulary is where the posterior over all weights earns its keep.** The rows of
#   the 64 unused ids keep the prior's variance exactly, and sigma's logit σ separates the
#   out-of-vocabulary sentences from the test sentences perfectly (AUROC 1.000, at every
#   temperature scanned). By the predictive entropy sigma reaches 0.965 with the evidence alone
#   and 0.986 at the validation temperature, against the softmax's 0.871 (FPR95 0.10 against
#   0.25); at T = 0.01, which the validation NLL does not pick, it is 0.997.
# - **In distribution, sigma does not beat the softmax; at best it ties.** With the evidence
#   alone it is under-confident: NLL 0.554 against 0.042 and a mean confidence of 0.58 at 98.4%
#   accuracy, because the evidence's α_g leave a large prior variance (α 0.18 and 0.39 on the
#   query and key projections) along the many weight directions the data do not determine. The
#   tempered likelihood removes that: at T = 10⁻⁴ — the smallest T scanned, where the validation
#   NLL was still falling, barely — sigma's NLL and ECE are the softmax's (0.042; 0.009 against
#   0.008) and its out-of-vocabulary detection stays.
# - **Shuffled sentences are flagged by nothing** (AUROC 0.49–0.53 for every method and score),
#   and rightly so for this classifier: it reads the two markers, which a shuffle keeps, and it
#   is as accurate on the shuffled sentences (0.980) as on the real ones (0.984). Weight
#   uncertainty grows on inputs that move what the network computes, not on inputs that are
#   unusual in ways the network ignores.
# - **Laplace-LoRA** (1,984 adapter weights; fine-tuning lifts the reversed task from 0.52 to
#   0.96 accuracy) behaves like the full posterior in distribution — under-confident with the
#   evidence (NLL 0.384 against the LoRA softmax's 0.102), the softmax's equal at the validation
#   temperature (0.102) — but it does not see the out-of-vocabulary tokens. With the evidence
#   its logit σ is the same on them as on real sentences (3.22 and 3.22) and its predictive is
#   *more* confident there (entropy AUROC 0.33); tempered, its logit σ does flag them (AUROC
#   0.80), but at 0.14–0.17 it is too small to move the probabilities (entropy AUROC 0.54, the
#   softmax's 0.535). A posterior over the adapters is uncertain about what the fine-tuning data
#   leave open in the adapters, not about inputs the frozen base never learned.

# %%
record = save_metrics(
    metrics_path,
    dict(
        results=results.to_dict(orient="index"),
        detection=detected.to_dict(orient="records") + lora_detected.to_dict(orient="records"),
        temperature_scan=scan_rows,
        lora_temperature_scan=lora_scan_rows,
        temperature=best_t,
        lora_temperature=lora_best_t,
        alpha=evidence_alpha,  # at T = 1
        lora_alpha=lora_evidence_alpha,
        n_params=la.n_params,
        n_adapter_params=la_lora.n_params,
        accuracy=dict(test=test_accuracy, shuffled=shuffled_accuracy, base_on_reversed=base_accuracy,
                      lora_on_reversed=tuned_accuracy),
        seconds=dict(train=train_seconds, fit=fit_seconds, predict=predict_seconds,
                     scan=scan_seconds, finetune=tune_seconds, lora_fit=lora_fit_seconds,
                     lora_predict_and_scan=lora_scan_seconds),
    ),
)  # fmt: skip
print(f"done in {time.time() - started:.0f} s", f"→ {metrics_path}" if metrics_path else "")
