# %% [markdown]
# # A tiny notebook that records its metrics, as notebook 01 does
#
# For the runner's and the report's tests: it stands in for `notebooks/01_original.py` — the
# same parameter names (`laplace_beta`, `epochs`, `seed`, `metrics_path`) and the same metric
# names the sweep report plots (`sigma_ggn_mean` per output, `coverage_95`, `log_evidence`,
# `test_rmse`) — but σ is a closed form of β (no training). Its last cell is the one-line
# `save_metrics` call every notebook of a sweep ends with.

# %%
import numpy as np

# %% tags=["parameters"]
laplace_beta: float = 1.0  # noise precision, > 0
epochs: int = 1  # training passes, ≥ 1
seed: int = 0  # random seed
metrics_path: str = ""  # where to write metrics.json; empty: nowhere

# %%
rng = np.random.default_rng(seed)
sigma_k = np.sqrt(1.0 / laplace_beta + rng.uniform(0.0, 0.01, size=3) / epochs)
test_rmse = 0.5 / epochs + 0.01 * seed
log_evidence = -((np.log(laplace_beta) - np.log(10.0)) ** 2) - epochs
print(sigma_k)

# %%
from sigma.sweep.records import save_metrics

metrics = save_metrics(
    metrics_path,
    dict(
        sigma_ggn_mean=sigma_k,
        test_rmse=test_rmse,
        coverage_95=float(np.clip(0.5 + 0.1 * np.log10(laplace_beta), 0, 1)),
        log_evidence=log_evidence,
    ),
)
print(sorted(metrics))
