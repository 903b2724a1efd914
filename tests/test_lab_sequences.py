"""Notebook 08's helpers (sigma.lab.sequences): the synthetic language and its labels, the
unfamiliar sets, the LoRA setup, and sigma's predictive and embedding variances as the notebook
reads them, on a tiny transformer."""

import keras
import numpy as np
import pytest

import sigma
from sigma.lab import sequences as sq
from sigma.lab.models import train

# the notebook's training of the transformer: Adam on the cross-entropy of the logits
ADAM = {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "optimizer": "adam", "schedule": "cosine"}  # fmt: skip
LANGUAGE = sq.Language(vocab_size=40, vocab_used=30, length=8, n_markers=3, successors=2, seed=0)


def test_the_language_splits_its_vocabulary_and_follows_its_grammar():
    lang = LANGUAGE
    markers, filler = set(lang.markers.ravel()), set(lang.filler)
    assert len(markers) == 6 and not markers & filler
    assert markers | filler == set(range(lang.vocab_used))
    ids, labels = lang.sample(500, seed=1)
    assert ids.shape == (500, 8) and ids.dtype == np.int32 and ids.max() < lang.vocab_used
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # two markers per sentence; the filler pairs between them follow the bigram grammar
    assert np.all(np.isin(ids, lang.markers).sum(axis=1) == 2)
    successors = {int(f): set(lang.filler[lang.transitions[i]]) for i, f in enumerate(lang.filler)}
    for row in ids[:50]:
        for a, b in zip(row[:-1], row[1:], strict=True):
            if a in filler and b in filler:
                assert b in successors[a]


@pytest.mark.parametrize("rule", sq.RULES)
def test_the_labels_read_the_markers_in_order(rule):
    ids, labels = LANGUAGE.sample(300, rule=rule, seed=2)
    np.testing.assert_array_equal(sq.read_labels(LANGUAGE, ids, rule=rule), labels)
    a, b = LANGUAGE.markers[0, 0], LANGUAGE.markers[1, 2]
    sentence = np.array([[LANGUAGE.filler[0]] * 8])
    sentence[0, 1], sentence[0, 5] = a, b  # A then B
    expected = 1 if rule == "order" else 2
    assert sq.read_labels(LANGUAGE, sentence, rule=rule)[0] == expected
    assert sq.read_labels(LANGUAGE, sentence[:, 2:], rule=rule)[0] == -1  # one marker left


def test_label_noise_and_bad_arguments():
    _, clean = LANGUAGE.sample(2000, seed=3)
    _, noisy = LANGUAGE.sample(2000, label_noise=0.4, seed=3)
    assert 0.2 < np.mean(clean != noisy) < 0.4  # 40% redrawn, a quarter of them unchanged
    with pytest.raises(ValueError, match="rule"):
        LANGUAGE.sample(3, rule="backwards")
    with pytest.raises(ValueError, match="label_noise"):
        LANGUAGE.sample(3, label_noise=1.5)
    with pytest.raises(ValueError, match="vocab_used"):
        sq.Language(vocab_size=10, vocab_used=20)
    with pytest.raises(ValueError, match="filler"):
        sq.Language(vocab_size=10, vocab_used=10, n_markers=5)
    with pytest.raises(ValueError, match="out-of-vocabulary"):
        sq.out_of_vocabulary(sq.Language(vocab_size=30, vocab_used=30, n_markers=3), 2)


def test_shuffled_and_out_of_vocabulary_sentences():
    ids, _ = LANGUAGE.sample(50, seed=4)
    mixed = sq.shuffled(ids, seed=5)
    np.testing.assert_array_equal(np.sort(mixed, axis=1), np.sort(ids, axis=1))
    assert np.mean(mixed != ids) > 0.5
    oov = sq.out_of_vocabulary(LANGUAGE, 50, seed=6)
    assert oov.shape == (50, 8) and oov.min() >= 30 and oov.max() < 40
    rows = sq.show(LANGUAGE, ids[:2], np.array([0, 3]))
    assert [r["class"] for r in rows] == ["A·A", "B·B"] and len(rows[0]["sentence"].split()) == 8


@pytest.fixture(scope="module")
def tiny():
    model = sq.transformer(40, 8, width=8, heads=2, feed_forward=8, seed=0)
    x, labels = LANGUAGE.sample(64, seed=7)
    train(model, x, labels, epochs=1, batch_size=32, **ADAM)
    return model, x, labels


def test_a_laplace_over_all_weights_keeps_the_prior_on_unused_embedding_rows(tiny):
    model, x, labels = tiny
    la = sigma.Laplace(model, x, labels, likelihood="classification", structure="kfac",
                       prior="layer")  # fmt: skip
    used, unused = sq.embedding_rows(la, LANGUAGE)
    assert unused["posterior variance"] == pytest.approx(unused["prior variance 1/α"], rel=1e-10)
    assert used["posterior variance"] < used["prior variance 1/α"]
    sets = {"test": x[:6], "out of vocabulary": sq.out_of_vocabulary(LANGUAGE, 6)}
    pred = sq.laplace_predictive(la, sets, method="mean_field")
    xs = sets["out of vocabulary"]  # what predict_proba gives, from one covariance
    np.testing.assert_allclose(
        pred["out of vocabulary"]["probs"], la.predict_proba(xs, method="mean_field"),
        rtol=1e-5, atol=1e-7,
    )  # fmt: skip
    cov = la.predictive_covariance(xs)
    np.testing.assert_allclose(
        pred["out of vocabulary"]["logit_std"], np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).mean(1)
    )
    rows = sq.detection({"sigma": pred})
    assert {(r["data"], r["score"]) for r in rows} == {
        ("out of vocabulary", s) for s in ("entropy", "1 − max p", "logit σ")
    }


def test_enable_lora_leaves_the_adapters_alone_trainable(tiny):
    model, x, labels = tiny
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    adapters = sq.enable_lora(clone, 2)
    assert len(adapters) == 2 * 6  # four projections, two feed-forward layers
    assert {id(v) for v in clone.trainable_variables} == {id(v) for v in adapters}
    before = [v.numpy().copy() for v in clone.non_trainable_variables]
    train(clone, x, labels, epochs=1, batch_size=32, **ADAM)  # B moves off its zero start
    for b, v in zip(before, clone.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(b, v.numpy())
    la = sigma.Laplace(clone, x, labels, likelihood="classification", structure="kfac",
                       weights=adapters)  # fmt: skip
    assert la.n_params == sum(int(np.prod(v.shape)) for v in adapters)
    assert {b.role for b in la.structure.plan.fast} == {"lora_a", "lora_b"}
    assert not la.structure.plan.generic
