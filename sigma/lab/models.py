"""The notebooks' one network builder, one trainer and one recipe of training settings.

* :func:`mlp` — every MLP of the notebooks (activation, dropout, dtype explicit), and
  :func:`small_cnn`, the one convolutional network (notebook 04);
* :func:`train` — compile and fit: the original notebook's RMSprop on the squared error, or
  Adam with a cosine-decayed step (the comparisons of notebooks 05–07, the transformer of
  notebook 08), optionally training for the posterior with :class:`sigma.EvidenceCallback`;
* :class:`Recipe` — what every method of a comparison shares (notebooks 05–07): the MLP, its
  training, the baselines' settings and the Laplace's.

Keras 3 caches its dtype policy: ``keras.config.set_floatx`` alone does not change the dtype of
new layers. :func:`mlp` passes ``dtype`` to every layer so float64 models are float64 for real.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

OPTIMIZERS = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
SCHEDULES = ("constant", "cosine")


def mlp(
    n_inputs: int,
    hidden: int | tuple[int, ...] = 4,
    n_outputs: int = 3,
    *,
    activation: str = "sigmoid",
    output_activation: str = "linear",
    dropout: float = 0.0,
    dtype: str = "float32",
    seed: int | None = 0,
) -> keras.Model:
    """A built Sequential MLP: ``n_inputs → hidden... (activation) → n_outputs``, with a
    ``Dropout(dropout)`` after every hidden layer when ``dropout > 0`` (MC dropout,
    :mod:`sigma.lab.baselines`). Dropout layers hold no weights: the weights are those of the
    plain MLP of the same seed. ``seed=None`` leaves Keras' random state as it is (a builder
    called after the caller seeded it, as :func:`sigma.compare_models` does).

    The one network builder of the notebooks. The original notebook's network is
    ``mlp(4, 4, 3)``: 4 sigmoid units (the default activation), 3 linear outputs, 35 weights;
    the comparisons of notebooks 05–07 pass their recipe's activation (tanh).
    """
    hidden = (hidden,) if isinstance(hidden, int | np.integer) else tuple(hidden)
    if any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden must be positive layer widths, got {hidden}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout}")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    layers = [keras.Input((n_inputs,), dtype=dtype)]
    for i, h in enumerate(hidden):
        layers.append(keras.layers.Dense(int(h), activation=activation, dtype=dtype))
        if dropout > 0:
            layers.append(keras.layers.Dropout(float(dropout), seed=(seed or 0) + i, dtype=dtype))
    layers.append(keras.layers.Dense(n_outputs, activation=output_activation, dtype=dtype))
    return keras.Sequential(layers)


def small_cnn(
    input_shape: tuple[int, ...] = (8, 8, 1),
    n_outputs: int = 10,
    *,
    filters: int = 8,
    hidden: int = 32,
    dtype: str = "float32",
    seed: int = 0,
) -> keras.Model:
    """A built small CNN: Conv2D(``filters``, 3×3, relu) → MaxPool 2×2 → Flatten →
    Dense(``hidden``, relu) → Dense(``n_outputs``) (linear: logits or regression outputs).
    On 8×8 digits with the defaults: 2,746 weights."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape, dtype=dtype),
            keras.layers.Conv2D(filters, 3, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(hidden, activation="relu", dtype=dtype),
            keras.layers.Dense(n_outputs, dtype=dtype),
        ]
    )


def _as_dtype(a, dtype):
    """Floating data in the model's dtype; integer labels or token ids stay integers."""
    a = np.asarray(a)
    return a if np.issubdtype(a.dtype, np.integer) else a.astype(dtype)


def dataset(x, y, *, batch_size: int, seed: int = 0, dtype: str = "float32") -> tf.data.Dataset:
    """(x, y) in batches of ``batch_size``, shuffled afresh every epoch in an order fixed by
    ``seed``. Integer labels stay integers."""
    return (
        tf.data.Dataset.from_tensor_slices((_as_dtype(x, dtype), _as_dtype(y, dtype)))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(int(batch_size))
    )


def train(
    model: keras.Model,
    x,
    y,
    *,
    loss="mean_squared_error",
    optimizer: str = "rmsprop",
    epochs: int = 20,
    batch_size: int = 1,
    learning_rate: float = 1e-3,
    schedule: str = "constant",
    metrics=None,
    seed: int = 0,
    validation_data=None,
    callbacks=None,
    evidence=None,
    fast: bool = False,
    verbose: int = 0,
) -> keras.callbacks.History:
    """Compile with ``optimizer`` ("rmsprop", the original notebook's, or "adam") and ``loss``
    and fit for ``epochs``; the defaults are the original notebook's (MSE, RMSprop, batch 1,
    20 epochs). The notebooks' one trainer.

    schedule : "constant" (the step ``learning_rate`` throughout) or "cosine" (from
        ``learning_rate`` down to 1% of it at the last step, cosine-shaped).
    metrics : Keras metrics to compile with (e.g. ``["categorical_accuracy"]``); none by default.
    evidence : train for the posterior — True, or a dict of :class:`sigma.EvidenceCallback`
        options (e.g. ``{"structure": "full", "prior": "layer", "every": 5}``), or a callback:
        the loss becomes the log posterior and α, β are re-estimated by the evidence during
        training. The callback is returned as ``history.evidence`` (its ``laplace`` is fitted
        at the final weights); ``callbacks`` are any other Keras callbacks.
    fast : Keras' own shuffling of the arrays, one compiled call per step (False), or — for the
        small data of the comparisons, where Keras' per-step and per-epoch overheads would
        dominate — the seeded :func:`dataset` with one compiled call per epoch
        (``steps_per_execution``), and without callbacks, evidence or validation data the
        ``epochs`` passes (each reshuffled) run as one Keras epoch: the same steps and
        learning-rate schedule, another random order of the minibatches. The History is then
        per Keras epoch.

    Floating data are cast to the model's dtype; integer labels or token ids stay integers.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    keras.utils.set_random_seed(seed)
    dtype = model.trainable_variables[0].dtype
    x, y = _as_dtype(x, dtype), _as_dtype(y, dtype)
    steps = int(np.ceil(len(x) / batch_size))
    rate = learning_rate
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, max(epochs * steps, 1), alpha=0.01
        )
    model.compile(
        optimizer=OPTIMIZERS[optimizer](rate), loss=loss, metrics=list(metrics or []),
        steps_per_execution=steps if fast else 1,
    )  # fmt: skip
    if validation_data is not None:
        validation_data = tuple(_as_dtype(v, dtype) for v in validation_data)
    callbacks = list(callbacks or [])
    found = None
    if evidence is not None and evidence is not False:
        from sigma.callbacks import EvidenceCallback

        if isinstance(evidence, EvidenceCallback):
            found = evidence
        elif evidence is True or isinstance(evidence, dict):
            found = EvidenceCallback(x, y, **({} if evidence is True else evidence))
        else:
            raise ValueError(
                "evidence must be True, a dict of EvidenceCallback options or an "
                f"EvidenceCallback, got {type(evidence).__name__}"
            )
        callbacks.append(found)
    with warnings.catch_warnings():  # the distance to the mode: kept as found.mode_gap
        warnings.filterwarnings("ignore", message="training stopped .* nats short of the mode")
        if fast:
            data = dataset(x, y, batch_size=batch_size, seed=seed, dtype=dtype)
            if not callbacks and validation_data is None:
                data, epochs = data.repeat(epochs), 1
            history = model.fit(data, epochs=epochs, verbose=verbose, shuffle=False,
                                validation_data=validation_data, callbacks=callbacks)  # fmt: skip
        else:
            history = model.fit(
                x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                verbose=verbose, shuffle=True, callbacks=callbacks,
            )  # fmt: skip
    history.evidence = found
    return history


@dataclass(frozen=True)
class Recipe:
    """What every method of a comparison shares (notebooks 05–07), in one place.

    The network and its training: the MLP ``n_inputs → hidden… → outputs`` (linear outputs;
    :meth:`network`), trained by Adam (:meth:`training`: keywords of :func:`train`; schedule
    "constant" or "cosine"). The baselines (:mod:`sigma.lab.baselines`): the deep ensemble's
    size and head ("gaussian": [μ | ln σ²] members on :class:`sigma.losses.GaussianNLL`; "mse"),
    MC dropout's rate and test-time passes. The Laplace: its ``structure``, the ``weights`` it
    covers, the ``prior`` groups, the :class:`sigma.EvidenceCallback`'s re-estimation ``every``
    epochs after ``warmup``. A classifier's held-out tuning (notebook 06): the ``validation``
    fraction of the training data, the ``link`` from logits to probabilities and the bounds
    of the search for the likelihood's temperature (``temperatures``).
    """

    hidden: tuple[int, ...] = (50,)
    activation: str = "tanh"
    dtype: str = "float32"
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    ensemble_size: int = 5
    ensemble_head: str = "gaussian"
    dropout: float = 0.1
    mc_samples: int = 100
    structure: str = "kfac"
    weights: str = "all"
    prior: str = "layer"
    every: int = 10
    warmup: int = 0
    validation: float = 0.25
    link: str = "mean_field"
    temperatures: tuple[float, float] = (1e-4, 1.0)

    def network(self, n_inputs: int, n_outputs: int, seed: int, *, dropout: float = 0.0):
        """The MLP every method starts from (:func:`mlp`; without dropout by default)."""
        return mlp(
            n_inputs, self.hidden, n_outputs, activation=self.activation, dropout=dropout,
            dtype=self.dtype, seed=seed,
        )  # fmt: skip

    def training(self) -> dict:
        """Keywords of :func:`train` (and of the baselines' ``fit``): Adam, the seeded
        one-call-per-epoch data path, this recipe's epochs, batch size, step and schedule."""
        return dict(
            optimizer="adam",
            fast=True,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            schedule=self.schedule,
        )


def reinitialised_copy(model: keras.Model, seed: int = 1) -> keras.Model:
    """Same architecture, fresh random weights: what the original notebook's
    ``tf.initialize_all_variables()`` silently did before taking output gradients."""
    keras.utils.set_random_seed(seed)
    clone = keras.models.clone_model(model)
    clone.build(model.inputs[0].shape if model.inputs else None)
    return clone
