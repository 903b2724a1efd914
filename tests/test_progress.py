"""Progress bars: automatic ones appear only once the work takes a few seconds; progress=True
shows them at once, False never."""

import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import progress


def test_bars_follow_progress(capsys, monkeypatch):
    model = make_mlp()
    x, y = np.random.default_rng(0).normal(size=(40, 3)), np.zeros((40, 2))
    sigma.Laplace(model, x, y, structure="diag", batch_size=8, progress=True).predict(x)
    shown = capsys.readouterr().err
    assert "diag curvature" in shown and "diag predictive" in shown
    la = sigma.Laplace(model, x, y, structure="diag", batch_size=8, progress=False)
    la.predict(x)
    assert capsys.readouterr().err == ""
    # automatic: nothing for quick work; a bar once the work takes longer than DELAY
    sigma.Laplace(model, x, y, structure="diag", batch_size=8).predict(x)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "DELAY", 0.0)
    sigma.Laplace(model, x, y, structure="diag", batch_size=8).predict(x)
    assert "diag predictive" in capsys.readouterr().err
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        sigma.Laplace(model, x, y, progress="yes")
