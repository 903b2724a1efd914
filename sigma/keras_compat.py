"""Everything sigma reads of Keras beyond its public API, in one place.

Keras' private attributes change between releases. sigma needs a few of them — a model's
layers in depth, the variables a layer owns, the stored kernel of a layer whose ``kernel``
property merges LoRA adapters, the graph nodes an input feeds — and reads them only through
the named functions of this module, each with a public fallback where one exists, tested
against the pinned Keras (tests/test_keras_compat.py). Nowhere else in the package reads a
private Keras name or a caller's frame.
"""

from __future__ import annotations

import inspect

import keras


def layers(model, *, include_self: bool = False) -> list:
    """Every layer of ``model`` in depth (nested models and the sublayers of layers such as
    ``MultiHeadAttention`` included), each once, in the order Keras tracks them."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=include_self, recursive=True))
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        found.append(layer)
        for sub in getattr(layer, "layers", []):
            visit(sub)

    if include_self:
        visit(model)
    else:
        for sub in model.layers:
            visit(sub)
    return found


def layer_labels(model) -> dict:
    """{id(layer): a name unique within ``model``} for every layer :func:`layers` lists: the
    layer's Keras path below the model ("block_1/query": the sublayers of two attention blocks
    are both named "query"; a Sequential's "dense_3", not "sequential/dense_3"), its name where
    it has no path, with " (2)", " (3)", ... for a repeat (two nested models each with a
    "dense")."""
    root = str(getattr(model, "path", None) or model.name) + "/"
    labels, seen = {}, {}
    for layer in layers(model, include_self=True):
        label = str(getattr(layer, "path", None) or layer.name)
        if layer is not model and label.startswith(root):
            label = label[len(root) :]
        seen[label] = seen.get(label, 0) + 1
        labels[id(layer)] = label if seen[label] == 1 else f"{label} ({seen[label]})"
    return labels


def own_variables(layer) -> list:
    """The variables ``layer`` created itself (not those of its sublayers): trainable first."""
    trainable = getattr(layer, "_trainable_variables", None)
    frozen = getattr(layer, "_non_trainable_variables", None)
    if trainable is None and frozen is None:  # pragma: no cover - a Keras without them
        subs = {id(v) for sub in layers(layer) for v in sub.weights}
        return [v for v in layer.weights if id(v) not in subs]
    return list(trainable or []) + list(frozen or [])


def runs_time_loops(model) -> bool:
    """Whether ``model`` holds a recurrent layer that steps through time in a ``while`` loop
    (a ``keras.layers.RNN`` — SimpleRNN, GRU, LSTM, inside a Bidirectional too — not
    unrolled): TensorFlow's pfor cannot vectorise the gradients of such a loop, so sigma loops
    over the samples instead of trying it first."""
    return any(
        isinstance(layer, keras.layers.RNN) and not getattr(layer, "unroll", False)
        for layer in layers(model, include_self=True)
    )


def has_convolution(model) -> bool:
    """Whether ``model`` holds a convolution layer (Conv1D/2D/3D, depthwise, separable,
    transposed), by class name: Keras' common base of them is private."""
    return any("Conv" in type(layer).__name__ for layer in layers(model))


def call_has_training_arg(model) -> bool:
    """Whether ``model.call`` takes ``training`` (``stateless_call`` passes it through)."""
    return bool(getattr(model, "_call_has_training_arg", True))


def kernel_variable(layer):
    """The stored kernel variable of a Dense, EinsumDense or convolution layer (its ``kernel``
    property merges LoRA adapters into a tensor), or None."""
    stored = getattr(layer, "_kernel", None)
    if stored is not None:
        return stored
    kernel = getattr(layer, "kernel", None)
    return kernel if isinstance(kernel, keras.Variable) else None


def embedding_variable(layer):
    """The stored table of an Embedding layer (its ``embeddings`` merges LoRA adapters)."""
    stored = getattr(layer, "_embeddings", None)
    if stored is not None:
        return stored
    table = getattr(layer, "embeddings", None)
    return table if isinstance(table, keras.Variable) else None


def lora_adapters(layer):
    """(A, B, scale) of a layer with Keras' LoRA enabled — kernel = stored + scale · A B, A of
    shape kernel.shape[:-1] + (r,), B (r, kernel.shape[-1]) — or None."""
    if not getattr(layer, "lora_enabled", False):
        return None
    a = getattr(layer, "lora_kernel_a", None)
    b = getattr(layer, "lora_kernel_b", None)
    if a is None:
        a = getattr(layer, "lora_embeddings_a", None)
        b = getattr(layer, "lora_embeddings_b", None)
    if a is None or b is None:
        return None
    return a, b, float(layer.lora_alpha) / float(layer.lora_rank)


def inbound_tensors(layer) -> list:
    """The symbolic tensors fed to ``layer`` in the functional graphs it belongs to."""
    out = []
    for node in getattr(layer, "_inbound_nodes", []):
        out.extend(getattr(node, "input_tensors", []))
    return out


def consumers(layer) -> list:
    """The operations (layers) that take ``layer``'s outputs in the functional graphs it
    belongs to, one per call."""
    return [node.operation for node in getattr(layer, "_outbound_nodes", [])]


def call_count(layer) -> int:
    """How many times ``layer`` was called in functional graphs (its nodes)."""
    return len(getattr(layer, "_inbound_nodes", []))


def history(tensor):
    """(layer, node index, tensor index) that produced a symbolic Keras tensor, or None."""
    return getattr(tensor, "_keras_history", None)


def inbound_node(layer, index):
    """The ``index``-th node at which ``layer`` was called in a functional graph."""
    return layer._inbound_nodes[index]


def loss_option(loss, name: str, default=None):
    """An option a compiled loss was made with (e.g. ``from_logits``), for a loss object or a
    loss function wrapped by Keras (``LossFunctionWrapper`` keeps its keywords privately)."""
    value = getattr(loss, name, None)
    if value is not None:
        return value
    config = {}
    try:
        config = loss.get_config() or {}
    except Exception:  # noqa: BLE001 - a loss without a config
        pass
    if name in config:
        return config[name]
    return getattr(loss, "_fn_kwargs", {}).get(name, default)


def output_names(model) -> list[str] | None:
    """The names of a functional model's outputs (its output layers'), or None."""
    try:
        names = list(getattr(model, "output_names", None) or [])
    except (AttributeError, ValueError):
        return None
    return [str(n) for n in names] or None


def as_model_inputs(model, parts):
    """``parts`` (a list in the order of ``model.inputs``, or one tensor) in the structure
    the model was built with — a dict by input name for a model built on a dict of inputs —
    so that Keras matches them by name whatever the dict's key order."""
    structure = getattr(model, "input", None)
    flat = keras.tree.flatten(parts)
    if not isinstance(structure, dict) or len(keras.tree.flatten(structure)) != len(flat):
        return parts
    return keras.tree.pack_sequence_as(structure, flat)


def fit_arguments(model) -> dict:
    """The local variables of the innermost ``model.fit`` call running — its arguments, after
    Keras' validation split — or ``{}`` outside ``fit``. Keras tells its callbacks the epochs
    and steps, not the data: they are read from the running call's frame."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return dict(frame.f_locals)
            frame = frame.f_back
    finally:
        del frame
    return {}


_OURS = ("sigma", "keras", "tensorflow")  # packages a warning never points into


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function that names the
    user's line: the first frame outside sigma, Keras and TensorFlow (a warning from
    ``Laplace.optimize_prior`` and from ``Posterior.optimize_prior`` alike, or from an
    EvidenceCallback inside ``model.fit``)."""
    frame, level = inspect.currentframe().f_back, 1
    try:
        while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OURS:
            frame, level = frame.f_back, level + 1
        return level
    finally:
        del frame
