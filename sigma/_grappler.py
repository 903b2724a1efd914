"""TensorFlow's graph optimiser (grappler) for sigma's own calls of its traced functions.

With oneDNN on (TensorFlow's default on x86 Linux), grappler's *remapper* asks of every
MatMul or Conv2D followed by BiasAdd (and an activation) whether oneDNN could fuse them on this
CPU; for a float64 graph the answer is logged, once per candidate node and each time a function
is optimised, as the C++ warning "Not handling type DT_DOUBLE" (tensorflow/core/util/util.cc):
20 lines on the terminal for one ``Laplace`` of a small float64 ReLU network, none a user can
act on. The remapper fuses no float64 contraction there (oneDNN's fused kernels take float32,
bfloat16 and half; tests/test_hardening.py checks that the values are the same to the bit), so
sigma runs its own graphs on a float64 model with the remapper off.

:func:`own_calls` sets that for the duration of sigma's call only, in the thread-local options
TensorFlow passes with each function call (the ``config_proto`` grappler optimises a function
with); on exit the options are put back as they were. The user's global configuration, the
user's own graphs (``model.predict``, ``fit``, a served ``to_keras()`` model) and sigma's graphs
on float32 models are untouched. Where the options cannot be read (another TensorFlow), nothing
changes and the messages stay.
"""

from __future__ import annotations

import contextlib

import numpy as np


def _float64(model) -> bool:
    try:
        return any(np.dtype(v.dtype) == np.float64 for v in model.trainable_variables)
    except Exception:  # noqa: BLE001 - not a built model: its checks come later, not here
        return False


@contextlib.contextmanager
def own_calls(model):
    """While active, in this thread: TensorFlow functions called on ``model``'s behalf by
    sigma are optimised without grappler's remapper when the model computes in float64 and
    oneDNN is on (see the module docstring). Re-entrant; restores the options on exit."""
    try:
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
        from tensorflow.python.eager import context
        from tensorflow.python.util import _pywrap_util_port

        applies = _pywrap_util_port.IsMklEnabled() and _float64(model)
        ctx = context.context() if applies else None
        saved = ctx.function_call_options if applies else None
    except (ImportError, AttributeError):  # pragma: no cover - another TensorFlow
        applies = False
    if not applies:
        yield
        return
    config = config_pb2.ConfigProto.FromString(saved.config_proto_serialized)
    rewrite = config.graph_options.rewrite_options
    if rewrite.remapping == rewriter_config_pb2.RewriterConfig.OFF:  # already (nested call)
        yield
        return
    rewrite.remapping = rewriter_config_pb2.RewriterConfig.OFF
    ctx.function_call_options = context.FunctionCallOptions(
        executor_type=saved.executor_type, config_proto=config
    )
    try:
        yield
    finally:
        ctx.function_call_options = saved
