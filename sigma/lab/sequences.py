"""Token sequences for ``notebooks/08_transformers_and_lora.py``: a synthetic text-classification
task generated in code, its out-of-distribution variants, a small transformer classifier, its
LoRA adapters, and the scores that compare the softmax with sigma's predictive.

**The language.** A vocabulary of ``vocab_size`` token ids (the rows of the embedding table), of
which only the first ``vocab_used`` ever occur in training. Among them, two groups of
``n_markers`` *marker* tokens, A and B; the others are *filler*. A sentence of ``length``
tokens is a walk on a sparse random Markov chain over the filler (each filler token has
``successors`` possible next tokens, equally likely: a grammar of bigrams), with two markers
written over two distinct random positions.

**The labels** (4 classes) read the two markers in order: 0 = A then A, 1 = A then B, 2 = B
then A, 3 = B then B. Telling 1 from 2 needs the order, hence the positions. ``rule="reversed"``
(the fine-tuning task) reads the pair right to left: 1 and 2 swap. ``label_noise`` replaces that
fraction of labels by uniformly drawn ones (the same for training and test sets).

**Out of distribution.** :func:`shuffled`: the same sentences with their positions permuted (the
bigrams broken, the markers' order random, the tokens unchanged); :func:`out_of_vocabulary`:
sentences of ids in ``[vocab_used, vocab_size)``: valid rows of the embedding table that no
training sentence touched, so training never moved them from their initial values.

Shapes: token ids (N, length) int32; labels (N,) int; probabilities (N, 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

CLASSES = ("A·A", "A·B", "B·A", "B·B")
RULES = ("order", "reversed")


# -- the language -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Language:
    """The vocabulary, the markers and the filler's bigram grammar (module docstring); drawn
    from ``seed``."""

    vocab_size: int = 256
    vocab_used: int = 192
    length: int = 24
    n_markers: int = 8
    successors: int = 3
    seed: int = 0
    markers: np.ndarray = field(init=False, repr=False)  # (2, n_markers): group A, group B
    filler: np.ndarray = field(init=False, repr=False)  # (F,) the filler ids
    transitions: np.ndarray = field(init=False, repr=False)  # (F, successors) indices into filler

    def __post_init__(self):
        for name in ("vocab_size", "vocab_used", "length", "n_markers", "successors"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.length < 2:
            raise ValueError(f"length must be at least 2 (two markers), got {self.length}")
        if self.vocab_used > self.vocab_size:
            raise ValueError(
                f"vocab_used ({self.vocab_used}) must be at most vocab_size ({self.vocab_size})"
            )
        n_filler = self.vocab_used - 2 * self.n_markers
        if n_filler < self.successors:
            raise ValueError(
                f"vocab_used ({self.vocab_used}) leaves {n_filler} filler tokens after "
                f"2 × {self.n_markers} markers: need at least successors ({self.successors})"
            )
        rng = np.random.default_rng(self.seed)
        ids = rng.permutation(self.vocab_used)
        markers = ids[: 2 * self.n_markers].reshape(2, self.n_markers)
        filler = np.sort(ids[2 * self.n_markers :])
        transitions = np.stack(
            [rng.choice(filler.size, self.successors, replace=False) for _ in filler]
        )
        object.__setattr__(self, "markers", markers)
        object.__setattr__(self, "filler", filler)
        object.__setattr__(self, "transitions", transitions)

    @property
    def out_of_vocabulary_ids(self) -> np.ndarray:
        """The ids no training sentence uses: ``vocab_used … vocab_size − 1``."""
        return np.arange(self.vocab_used, self.vocab_size)

    def sample(self, n: int, *, rule: str = "order", label_noise: float = 0.0, seed: int = 0):
        """``n`` sentences and their labels: (ids (n, length) int32, labels (n,) int64)."""
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if not 0.0 <= float(label_noise) <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {label_noise!r}")
        rng = np.random.default_rng(seed)
        state = np.empty((n, self.length), dtype=np.int64)  # indices into filler
        state[:, 0] = rng.integers(self.filler.size, size=n)
        for t in range(1, self.length):
            state[:, t] = self.transitions[state[:, t - 1], rng.integers(self.successors, size=n)]
        ids = self.filler[state]
        where = np.sort(np.argsort(rng.random((n, self.length)), axis=1)[:, :2], axis=1)
        groups = rng.integers(2, size=(n, 2))  # the group of the first and the second marker
        rows = np.arange(n)[:, None]
        ids[rows, where] = self.markers[groups, rng.integers(self.n_markers, size=(n, 2))]
        first, second = (groups[:, 1], groups[:, 0]) if rule == "reversed" else groups.T
        labels = 2 * first + second
        noisy = rng.random(n) < float(label_noise)
        labels[noisy] = rng.integers(len(CLASSES), size=int(noisy.sum()))
        return ids.astype(np.int32), labels


def shuffled(ids, *, seed: int = 0) -> np.ndarray:
    """Each sentence with its positions permuted (its own permutation): the same tokens, the
    bigrams broken and the markers' order random."""
    ids = np.asarray(ids)
    order = np.argsort(np.random.default_rng(seed).random(ids.shape), axis=1)
    return np.take_along_axis(ids, order, axis=1)


def out_of_vocabulary(language: Language, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` sentences of ids drawn uniformly from the ids no training sentence uses."""
    unused = language.out_of_vocabulary_ids
    if unused.size == 0:
        raise ValueError("vocab_used == vocab_size: the language has no out-of-vocabulary ids")
    rng = np.random.default_rng(seed)
    return unused[rng.integers(unused.size, size=(n, language.length))].astype(np.int32)


def read_labels(language: Language, ids, *, rule: str = "order") -> np.ndarray:
    """The label ``rule`` gives each sentence, read from its markers in order (e.g. of a
    shuffled sentence); −1 for a sentence without exactly two markers. (N,) int64."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    ids = np.asarray(ids)
    group = np.full(ids.shape, -1)
    for g in (0, 1):
        group[np.isin(ids, language.markers[g])] = g
    labels = np.full(len(ids), -1, dtype=np.int64)
    for n, row in enumerate(group):
        found = row[row >= 0]
        if found.size == 2:
            first, second = found[::-1] if rule == "reversed" else found
            labels[n] = 2 * first + second
    return labels


def show(language: Language, ids, labels=None) -> list[dict]:
    """Sentences as text, one row each: a marker as its group and index (A3, B0), a filler or
    out-of-vocabulary token as its id; with the class name when ``labels`` are given."""
    names = {int(v): f"{'AB'[g]}{i}" for g in (0, 1) for i, v in enumerate(language.markers[g])}
    rows = []
    for n, row in enumerate(np.asarray(ids)):
        out = {"sentence": " ".join(names.get(int(v), str(int(v))) for v in row)}
        if labels is not None:
            out["class"] = CLASSES[int(labels[n])] if labels[n] >= 0 else "—"
        rows.append(out)
    return rows


def examples(language: Language, named: dict):
    """A table of sentences for the notebook: ``named`` {set name: (ids, labels or None)};
    left-aligned, monospace, markers in bold (A blue, B orange). A pandas Styler."""
    import re

    import pandas as pd

    rows = []
    for name, (ids, labels) in named.items():
        labels = np.full(len(ids), -1) if labels is None else np.asarray(labels)
        rows += [{"set": name, **row} for row in show(language, ids, labels)]
    colours = {"A": "#1f77b4", "B": "#d62728"}

    def marked(text):
        return re.sub(
            r"\b([AB])(\d+)\b",
            lambda m: f'<b style="color:{colours[m.group(1)]}">{m.group(0)}</b>',
            text,
        )

    return (
        pd.DataFrame(rows)
        .style.format(marked, subset=["sentence"])
        .set_properties(subset=["sentence"], **{"text-align": "left", "font-family": "monospace"})
        .hide(axis="index")
    )


def feature_norms(model: keras.Model, sets: dict, *, block: int = 0) -> list[dict]:
    """The mean norm, per token, of the inputs of block ``block``'s attention and feed-forward
    layers on each set (a model of :func:`transformer`): what the adapters' gradients scale
    with."""
    attention_in = "positions" if block == 0 else f"norm_{block - 1}_feed_forward"
    probe = keras.Model(
        model.input,
        [model.get_layer(attention_in).output, model.get_layer(f"norm_{block}_attention").output],
    )
    rows = []
    for name, x in sets.items():
        a, f = (np.linalg.norm(np.asarray(t), axis=-1).mean() for t in probe(np.asarray(x)))
        rows.append({"data": name, "attention input": float(a), "feed-forward input": float(f)})
    return rows


def embedding_rows(la, language: Language, *, layer: str = "embedding") -> list[dict]:
    """The rows of the embedding table of ids used in training against ids never used: their
    mean norm, and under the Laplace ``la`` (over all weights) the mean posterior variance of
    their weights, diag(A⁻¹), next to the prior's 1/α."""
    table = la.model.get_layer(layer).embeddings.numpy()
    block = next(b for b in la.structure.plan.fast if b.kind == "embedding")
    alpha = la.posterior.alpha_weights()
    inverse = la.structure.inverse_diagonal(alpha, la.beta)
    variance = inverse[block.index].reshape(table.shape)
    prior = 1.0 / np.broadcast_to(alpha, inverse.shape)[block.index].reshape(table.shape)
    used = np.arange(language.vocab_used)
    rows = []
    for name, ids in (("used in training", used), ("never used", language.out_of_vocabulary_ids)):
        rows.append(
            {
                "ids": name,
                "rows": ids.size,
                "mean norm": float(np.linalg.norm(table[ids], axis=1).mean()),
                "posterior variance": float(variance[ids].mean()),
                "prior variance 1/α": float(prior[ids].mean()),
            }
        )
    return rows


# -- the transformer ----------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="sigma.lab")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position, (length, width), to a (N, length, width) input."""

    def __init__(self, length: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.length, self.width = int(length), int(width)

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=(self.length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="positions",
        )

    def call(self, x):
        return x + keras.ops.cast(self.positions, x.dtype)

    def get_config(self):
        return {**super().get_config(), "length": self.length, "width": self.width}


def transformer(
    vocab_size: int,
    length: int,
    n_classes: int = len(CLASSES),
    *,
    width: int = 32,
    heads: int = 2,
    feed_forward: int = 64,
    blocks: int = 1,
    seed: int = 0,
) -> keras.Model:
    """A post-norm transformer encoder classifier: token Embedding + PositionEmbedding, then
    ``blocks`` × (MultiHeadAttention + residual + LayerNormalization, Dense(feed_forward, gelu)
    → Dense(width) + residual + LayerNormalization), mean pooling over positions, and a Dense
    head of ``n_classes`` linear logits. float32."""
    if width % heads:
        raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
    keras.utils.set_random_seed(seed)
    inp = keras.Input((length,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab_size, width, name="embedding")(inp)
    h = PositionEmbedding(length, width, name="positions")(h)
    for b in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, width // heads, name=f"attention_{b}")(h, h)
        h = keras.layers.LayerNormalization(name=f"norm_{b}_attention")(h + a)
        f = keras.layers.Dense(feed_forward, activation="gelu", name=f"feed_forward_{b}_in")(h)
        f = keras.layers.Dense(width, name=f"feed_forward_{b}_out")(f)
        h = keras.layers.LayerNormalization(name=f"norm_{b}_feed_forward")(h + f)
    h = keras.layers.GlobalAveragePooling1D(name="mean_pool")(h)
    return keras.Model(inp, keras.layers.Dense(n_classes, name="head")(h), name="transformer")


def lora_layers(model: keras.Model) -> list:
    """The layers that get LoRA adapters: every attention projection (query, key, value,
    output: EinsumDense) and both feed-forward Dense layers of every block; not the embedding
    or the head."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            found += [layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense]
        elif isinstance(layer, keras.layers.Dense) and layer.name.startswith("feed_forward"):
            found.append(layer)
    return found


def enable_lora(model: keras.Model, rank: int, *, seed: int = 0) -> list:
    """Keras' LoRA (``layer.enable_lora(rank)``: kernel W₀ + A B, A he-uniform, B zero) on
    :func:`lora_layers`, and every other weight frozen (the base kernels by Keras, their
    biases, the embeddings, the norms and the head here): afterwards the model's trainable
    variables are the adapters alone, which are returned."""
    keras.utils.set_random_seed(seed)
    layers = lora_layers(model)
    chosen = {id(layer) for layer in layers}
    for layer in model.layers:  # an attention layer stays trainable: its projections get LoRA
        if id(layer) not in chosen and not isinstance(layer, keras.layers.MultiHeadAttention):
            layer.trainable = False
    adapters = []
    for layer in layers:  # a layer made trainable again would add frozen adapters
        layer.enable_lora(rank)
        if layer.bias is not None:
            layer.bias.trainable = False
        adapters += [layer.lora_kernel_a, layer.lora_kernel_b]
    trainable = {id(v) for v in model.trainable_variables}
    if trainable != {id(v) for v in adapters}:  # a Keras change would make this silently wrong
        raise RuntimeError("enable_lora: the trainable variables are not the adapters alone")
    return adapters


# -- scores -------------------------------------------------------------------------------------
def softmax_predictive(model: keras.Model, sets: dict, *, batch_size: int = 512) -> dict:
    """The trained network's own softmax on each set: {name: {"probs": (N, K)}}."""
    from sigma.classification import softmax

    return {
        name: {"probs": softmax(model.predict(x, batch_size=batch_size, verbose=0))}
        for name, x in sets.items()
    }


def laplace_predictive(la, sets: dict, *, method: str = "probit") -> dict:
    """sigma's predictive on each set: {name: {"probs": (N, K), "logit_std": (N,)}}. The logit
    covariance J A⁻¹ Jᵀ (``la.predictive_covariance``) is computed once per set and gives both
    the class probabilities by ``method`` — what ``la.predict_proba(x, method=method)``
    returns — and the mean over classes of each logit's σ = √diag(J A⁻¹ Jᵀ)."""
    from sigma.classification import probabilities

    out = {}
    for name, x in sets.items():
        cov = la.predictive_covariance(x)
        logits = la.model.predict(x, batch_size=512, verbose=0).astype(np.float64)
        out[name] = {
            "probs": probabilities(logits, cov, method=method),
            "logit_std": np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).mean(axis=1),
        }
    return out


SCORES = {
    "entropy": "predictive entropy (nats)",
    "1 − max p": "1 − largest probability",
    "logit σ": "mean logit σ = mean of √diag(J A⁻¹ Jᵀ)",
}


def uncertainty(prediction: dict) -> dict:
    """The uncertainty scores of one set's prediction (higher: less sure), {score: (N,)}."""
    from sigma.metrics import predictive_entropy

    probs = prediction["probs"]
    scores = {"entropy": predictive_entropy(probs), "1 − max p": 1.0 - probs.max(axis=1)}
    if "logit_std" in prediction:
        scores["logit σ"] = prediction["logit_std"]
    return scores


def in_distribution(predictions: dict, labels, *, data: str = "test") -> list[dict]:
    """Accuracy, NLL, ECE and Brier score of each method on its in-distribution set:
    predictions {method: {set: prediction}}; one row per method."""
    from sigma.metrics import classification_metrics

    rows = []
    for method, sets in predictions.items():
        probs = sets[data]["probs"]
        row = {"method": method, **classification_metrics(probs, labels)}
        row["confidence"] = float(probs.max(axis=1).mean())
        rows.append(row)
    return rows


def detection(predictions: dict, *, reference: str = "test") -> list[dict]:
    """AUROC and FPR at 95% TPR of telling each other set from ``reference`` by each score,
    and the mean score on each set: one row per (method, data, score)."""
    from sigma.metrics import auroc, fpr_at_tpr

    rows = []
    for method, sets in predictions.items():
        base = uncertainty(sets[reference])
        for data, prediction in sets.items():
            if data == reference:
                continue
            for score, values in uncertainty(prediction).items():
                rows.append(
                    {
                        "method": method,
                        "data": data,
                        "score": score,
                        "auroc": auroc(base[score], values),
                        "fpr95": fpr_at_tpr(base[score], values),
                        "mean in": float(np.mean(base[score])),
                        "mean out": float(np.mean(values)),
                    }
                )
    return rows


def summary(predictions: dict, labels: dict, *, reference: str = "test") -> list[dict]:
    """One row per method: accuracy, NLL and ECE on its ``reference`` set (``labels``: {method:
    labels of that set}), and the AUROC of the predictive entropy — and of the logit σ where
    the method has one — against each other set."""
    rows = []
    for method, sets in predictions.items():
        scores = in_distribution({method: sets}, labels[method], data=reference)[0]
        row = {"method": method, **{k: scores[k] for k in ("accuracy", "nll", "ece", "confidence")}}
        for r in detection({method: sets}, reference=reference):
            if r["score"] == "entropy":
                row[f"AUROC {r['data']}"] = r["auroc"]
        for r in detection({method: sets}, reference=reference):
            if r["score"] == "logit σ":
                row[f"AUROC {r['data']}, logit σ"] = r["auroc"]
        rows.append(row)
    return rows


def temperature_scan(
    la, sets: dict, labels, x_val, labels_val, temperatures, *, method: str = "probit",
    reference: str = "test",
) -> tuple[list[dict], dict]:  # fmt: skip
    """For each likelihood temperature T (``la.temperature = T``, no refit), the α_g of the
    tempered model's evidence (``la.optimize_evidence()``) and the predictive on a validation
    set and on ``sets`` (``labels``: those of ``sets[reference]``): one row per T (validation
    and test NLL, mean logit σ on each set, AUROC of each other set against ``reference`` by
    the predictive entropy), and {T: predictions}. A T whose evidence fails is a row with its
    error and no predictions. Leaves ``la`` at the last T."""
    from sigma.metrics import auroc, nll, predictive_entropy

    rows, predictions = [], {}
    for t in temperatures:
        row = {"temperature": float(t)}
        try:
            la.temperature = float(t)
            la.optimize_evidence()
        except ValueError as exc:  # EvidenceError, EvidenceBoundaryError or an ill-conditioned A
            rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        val = laplace_predictive(la, {"validation": x_val}, method=method)["validation"]
        pred = laplace_predictive(la, sets, method=method)
        row["validation NLL"] = nll(val["probs"], labels_val)
        row[f"{reference} NLL"] = nll(pred[reference]["probs"], labels)
        base = predictive_entropy(pred[reference]["probs"])
        for data, p in pred.items():
            if data != reference:
                row[f"AUROC {data}"] = auroc(base, predictive_entropy(p["probs"]))
        for data, p in pred.items():
            row[f"logit σ {data}"] = float(np.mean(p["logit_std"]))
        rows.append(row)
        predictions[float(t)] = pred
    return rows, predictions


def _minor_label(value, _position) -> str:
    """Label the minor ticks 2 and 5 of each decade of a log axis (plain numbers)."""
    digit = round(value / 10 ** np.floor(np.log10(value)))
    return f"{value:g}" if digit in (2, 5) else ""


def plot_uncertainty(predictions: dict, scores=("entropy", "logit σ"), *, bins: int = 30):
    """Histograms of each score (a row per score) of each method (a column per method) on
    every set, as densities; a method without the score (the softmax has no logit σ) leaves
    its panel empty. The entropy's bins span [0, ln K]; the logit σ is binned on a log scale."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    methods = list(predictions)
    fig, axes = plt.subplots(
        len(scores), len(methods), figsize=(4.4 * len(methods), 3.6 * len(scores)), squeeze=False
    )
    for row, score in zip(axes, scores, strict=True):
        for ax, method in zip(row, methods, strict=True):
            values = {d: uncertainty(p).get(score) for d, p in predictions[method].items()}
            if any(v is None for v in values.values()):
                ax.set_axis_off()
                continue
            k = next(iter(predictions[method].values()))["probs"].shape[1]
            every = np.concatenate(list(values.values()))
            if score == "logit σ":
                lo, hi = np.log10(np.maximum([every.min(), every.max()], 1e-12))
                edges = np.logspace(lo - 0.05, hi + 0.05, bins + 1)
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
                ax.tick_params(axis="x", which="minor", labelsize=8)
            elif score == "entropy":
                edges = np.linspace(0.0, np.log(k), bins + 1)
            else:
                edges = np.linspace(0.0, 1.0 - 1.0 / k, bins + 1)
            top = 0.0
            for i, (data, v) in enumerate(values.items()):
                counts, _, _ = ax.hist(v, bins=edges, density=True, histtype="stepfilled",
                                       alpha=0.3, color=f"C{i}")  # fmt: skip
                ax.hist(v, bins=edges, density=True, histtype="step", lw=1.6, color=f"C{i}",
                        label=f"{data} (mean {np.mean(v):.3g})")  # fmt: skip
                top = max(top, counts.max())
            ax.set_ylim(0, 1.45 * top)  # room for the legend above the bars
            ax.set_title(method, fontsize=12)
            ax.set_xlabel(SCORES.get(score, score), fontsize=11)
            ax.set_ylabel("density", fontsize=11)
            ax.legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    return fig
