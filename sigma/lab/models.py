"""Building and training the notebook's networks, with a real choice of float precision.

Keras 3 caches its dtype policy: ``keras.config.set_floatx`` alone does not change the dtype of
new layers. :func:`mlp` passes ``dtype`` to every layer so float64 models are float64 for real.
"""

from __future__ import annotations

import keras
import numpy as np


def mlp(
    n_inputs: int,
    hidden: int | tuple[int, ...] = 4,
    n_outputs: int = 3,
    *,
    activation: str = "sigmoid",
    output_activation: str = "linear",
    dropout: float = 0.0,
    dtype: str = "float32",
    seed: int = 0,
) -> keras.Model:
    """A built Sequential MLP: ``n_inputs → hidden... (activation) → n_outputs``, with a
    ``Dropout(dropout)`` after every hidden layer when ``dropout > 0`` (MC dropout,
    :mod:`sigma.lab.baselines`). Dropout layers hold no weights: the weights are those of the
    plain MLP of the same seed.

    The one network builder of the notebooks. The original notebook's network is
    ``mlp(4, 4, 3)``: 4 sigmoid units (the default activation), 3 linear outputs, 35 weights;
    the comparisons of notebooks 05–07 pass their recipe's activation (tanh).
    """
    hidden = (hidden,) if isinstance(hidden, int | np.integer) else tuple(hidden)
    if any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden must be positive layer widths, got {hidden}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout}")
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((n_inputs,), dtype=dtype)]
    for i, h in enumerate(hidden):
        layers.append(keras.layers.Dense(int(h), activation=activation, dtype=dtype))
        if dropout > 0:
            layers.append(keras.layers.Dropout(float(dropout), seed=seed + i, dtype=dtype))
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


def train(
    model: keras.Model,
    x,
    y,
    *,
    epochs: int = 20,
    batch_size: int = 1,
    learning_rate: float = 1e-3,
    loss: str = "mean_squared_error",
    seed: int = 0,
    validation_data=None,
    verbose: int = 0,
    evidence=None,
) -> keras.callbacks.History:
    """Compile with RMSprop and fit, as the original notebook (MSE, batch 1, 20 epochs).

    evidence : train for the posterior — True, or a dict of :class:`sigma.EvidenceCallback`
        options (e.g. ``{"structure": "full", "prior": "layer", "every": 5}``), or a callback:
        the loss becomes the log posterior and α, β are re-estimated by the evidence during
        training. The callback is returned as ``history.evidence`` (its ``laplace`` is fitted
        at the final weights).
    """
    keras.utils.set_random_seed(seed)
    metrics = ["accuracy"] if loss != "mean_squared_error" else ["categorical_accuracy"]
    model.compile(loss=loss, optimizer=keras.optimizers.RMSprop(learning_rate), metrics=metrics)
    dtype = model.trainable_variables[0].dtype
    if validation_data is not None:
        validation_data = tuple(np.asarray(v, dtype=dtype) for v in validation_data)
    x, y = np.asarray(x, dtype=dtype), np.asarray(y, dtype=dtype)
    callbacks = []
    if evidence is not None and evidence is not False:
        from sigma.callbacks import EvidenceCallback

        if isinstance(evidence, EvidenceCallback):
            callbacks.append(evidence)
        elif evidence is True or isinstance(evidence, dict):
            callbacks.append(EvidenceCallback(x, y, **({} if evidence is True else evidence)))
        else:
            raise ValueError(
                "evidence must be True, a dict of EvidenceCallback options or an "
                f"EvidenceCallback, got {type(evidence).__name__}"
            )
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation_data,
        verbose=verbose,
        shuffle=True,
        callbacks=callbacks,
    )
    history.evidence = callbacks[0] if callbacks else None
    return history


def reinitialised_copy(model: keras.Model, seed: int = 1) -> keras.Model:
    """Same architecture, fresh random weights: what the original notebook's
    ``tf.initialize_all_variables()`` silently did before taking output gradients."""
    keras.utils.set_random_seed(seed)
    clone = keras.models.clone_model(model)
    clone.build(model.inputs[0].shape if model.inputs else None)
    return clone
