"""Memory estimates and the refusal before a large allocation."""

import keras
import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import memory, structures
from sigma.memory import InsufficientMemoryError


def test_parse_and_format_bytes():
    assert memory.parse_bytes(1024) == 1024
    assert memory.parse_bytes("2GB") == 2_000_000_000
    assert memory.parse_bytes("1.5 MiB") == 1_572_864
    assert memory.format_bytes(2_300_000_000_000) == "2.3 TB"
    for bad in ("lots", -1, 0, "3 parsecs", True):
        with pytest.raises(ValueError, match="max_memory must be"):
            memory.parse_bytes(bad)


def test_estimates_follow_the_design_table(mlp64):
    p = 54
    kw = dict(n_data=100, n_outputs=2)
    full = structures.estimate("full", mlp64, **kw)
    assert full >= 4 * p * p * 8
    assert structures.estimate("last_layer", mlp64, **kw) >= 4 * 10 * 10 * 8
    assert structures.estimate(sigma.structures.LowRank(rank=30), mlp64, **kw) == pytest.approx(
        structures.estimate("full", mlp64, **kw)
    )  # 2k + 1 > P: the dense fallback
    big = make_mlp(n_in=50, hidden=(400, 400), n_out=3)
    pb = sigma.num_params(big)
    lowrank = structures.estimate(sigma.structures.LowRank(rank=10), big, **kw)
    assert (10 + 60) * pb * 8 <= lowrank < structures.estimate("full", big, **kw) / 50


def test_full_on_270k_weights_is_refused_before_allocating(rng):
    """784-256-256-10: P = 269,322, so the full P×P matrix alone would be 580 GB."""
    model = sigma.lab.mlp(784, (256, 256), 10, activation="relu", dtype="float32")
    assert sigma.num_params(model) == 269_322
    x, y = rng.normal(size=(16, 784)), rng.normal(size=(16, 10))
    with memory.PeakMemory() as peak, pytest.raises(InsufficientMemoryError) as err:
        sigma.Laplace(model, x, y, structure="full")
    message = str(err.value)
    assert message.startswith("structure='full' needs about 2.32 TB for P=269,322 weights")
    for name in ("lowrank", "last_layer"):
        assert f"'{name}'" in message
    assert err.value.needed > err.value.limit and "full" not in err.value.fits
    assert peak.bytes < 1e9  # refused before any large allocation


def test_max_memory_triggers_refusal_on_a_small_model(rng, mlp64):
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    kw = dict(n_data=12, n_outputs=2)
    needed = structures.estimate("full", mlp64, **kw)
    limit = (needed + structures.estimate("last_layer", mlp64, **kw)) // 2
    with pytest.raises(
        InsufficientMemoryError, match=r"structures that fit: .*'last_layer'"
    ) as err:
        sigma.Laplace(mlp64, x, y, max_memory=limit)
    assert err.value.structure == "full" and err.value.limit == limit
    with pytest.raises(InsufficientMemoryError, match="no registered structure fits"):
        sigma.Laplace(mlp64, x, y, max_memory=10)
    la = sigma.Laplace(mlp64, x, y, max_memory=needed)
    assert la.memory_estimate == needed
    assert isinstance(err.value, MemoryError)


def test_available_and_peak_memory():
    assert memory.available_bytes() > 0
    with memory.PeakMemory() as peak:
        block = np.ones(50_000_000 // 8)  # 50 MB, touched
        block.sum()
    assert 30e6 < peak.bytes < 500e6 and peak.seconds > 0


def test_layerwise_estimates_follow_the_blocks_a_fit_would_have():
    """zoo: the kfac estimate counted a DepthwiseConv (a generic block of a few weights) as
    Kronecker factors and ignored weights= (13.6 GB for a MobileNet). Now it is the plan's:
    an embedding's input factor is its diagonal (V, never V²), positions come from the layers'
    output shapes, a generic block is its own size squared, and a selection shrinks it."""
    inp = keras.Input((8,), dtype="int32")
    h = keras.layers.Embedding(50_000, 16, name="emb")(inp)
    h = keras.layers.DepthwiseConv1D(3, padding="same", name="depthwise")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(h))
    kw = dict(n_data=100, n_outputs=10, batch_size=10)
    kfac = sigma.structures.KFAC()
    plan = kfac.static_plan(model)
    assert {b.label: b.positions for b in plan.fast} == {"emb": 8, "head": 1}
    assert [(g.name, g.size) for g in plan.generic] == [("depthwise", 3 * 16 + 16)]
    batch = kfac._batch_bytes(model, plan, 100, 10, 10)
    factors = 3 * ((50_000 + 16**2) + (17**2 + 10**2)) + 64**2
    assert structures.estimate(kfac, model, **kw) == 8 * factors + batch
    head = [model.get_layer("head").kernel, model.get_layer("head").bias]
    selected = structures.estimate("kfac", model, weights=head, **kw)
    assert selected < structures.estimate("kfac", model, **kw) / 10
    diag = structures.estimate("diag", model, **kw)
    assert 4 * 8 * sigma.num_params(model) < diag < 4 * 8 * sigma.num_params(model) + 10**8
