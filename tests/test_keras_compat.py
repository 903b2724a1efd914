"""sigma.keras_compat against the pinned Keras: every private name sigma reads, through the one
module allowed to read them."""

import re
from pathlib import Path

import keras
import numpy as np

from sigma import keras_compat

ROOT = Path(__file__).resolve().parents[1]


def _model():
    keras.utils.set_random_seed(0)
    inp = {"ids": keras.Input((3,), name="ids"), "x": keras.Input((2,), name="x")}
    emb = keras.layers.Embedding(5, 2, name="emb")
    h = keras.layers.Flatten()(emb(inp["ids"]))
    dense = keras.layers.Dense(3, name="dense")
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)], name="inner")
    out = inner(
        keras.layers.Concatenate()([dense(h), keras.layers.Dense(5, name="side")(inp["x"])])
    )
    return keras.Model(inp, [out, keras.layers.Dense(1, name="head")(h)]), emb, dense


def test_layers_variables_and_kernels():
    model, emb, dense = _model()
    names = [layer.name for layer in keras_compat.layers(model)]
    assert "inner" in names and "emb" in names  # nested models are walked
    assert keras_compat.layers(model, include_self=True)[0] is model
    assert [v.path for v in keras_compat.own_variables(dense)] == ["dense/kernel", "dense/bias"]
    assert keras_compat.kernel_variable(dense) is dense.kernel
    assert keras_compat.embedding_variable(emb) is emb.embeddings
    assert keras_compat.lora_adapters(dense) is None
    dense.enable_lora(2)
    a, b, scale = keras_compat.lora_adapters(dense)
    assert a.shape == (6, 2) and b.shape == (2, 3) and scale == 1.0
    assert keras_compat.kernel_variable(dense) is dense._kernel  # not the merged kernel
    emb.enable_lora(1)
    assert keras_compat.lora_adapters(emb)[0].shape == (5, 1)
    assert keras_compat.call_has_training_arg(model)


def test_graph_reads():
    model, emb, _ = _model()
    ids = model.input["ids"]
    assert any(t is ids for t in keras_compat.inbound_tensors(emb))
    history = keras_compat.history(model.outputs[1])
    assert history.operation.name == "head"
    node = keras_compat.inbound_node(history.operation, history.node_index)
    assert len(node.input_tensors) == 1
    assert keras_compat.output_names(model) == ["inner", "head"]
    parts = [np.zeros((1, 3)), np.ones((1, 2))]  # in model.inputs' order
    packed = keras_compat.as_model_inputs(model, parts)
    assert isinstance(packed, dict) and float(np.sum(packed["x"])) == 2.0


def test_loss_options_and_fit_arguments():
    ce = keras.losses.CategoricalCrossentropy(from_logits=True)
    assert keras_compat.loss_option(ce, "from_logits") is True
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.categorical_crossentropy)  # a function Keras wraps
    assert keras_compat.loss_option(model.loss, "from_logits", False) is False
    assert keras_compat.fit_arguments(None) == {}
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.update(keras_compat.fit_arguments(self.model))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((10, 2)), np.zeros((10, 1))
    model.fit(x, y, epochs=1, verbose=0, validation_split=0.2, callbacks=[Probe()])
    assert seen["validation_split"] == 0.2 and len(seen["x"]) == 8  # after Keras' split


def test_no_other_module_reads_keras_internals():
    private = re.compile(
        r"_flatten_layers|_inbound_nodes|_keras_history|\b_trainable_variables|"
        r"_non_trainable_variables|_fn_kwargs|_call_has_training_arg|\._kernel\b|"
        r"\._embeddings\b|f_locals|currentframe|_getframe"
    )
    found = []
    for path in sorted((ROOT / "sigma").rglob("*.py")):
        if path.name == "keras_compat.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, found
