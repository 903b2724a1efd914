# %% [markdown]
# # A tiny notebook that records its metrics
#
# For the runner's tests: σ per output is a closed form of β (no training), and the last cell
# is the one-line `sigma.runs.record_metrics` call every notebook of a sweep ends with.

# %%
import numpy as np

import sigma.runs

# %% tags=["parameters"]
beta: float = 1.0  # noise precision, > 0
epochs: int = 1  # training passes, ≥ 1
seed: int = 0  # random seed
metrics_path: str = ""  # where to write metrics.json; empty: nowhere

# %%
rng = np.random.default_rng(seed)
sigma_k = np.sqrt(1.0 / beta + rng.uniform(0.0, 0.01, size=3) / epochs)
test_error = 0.5 / epochs + 0.01 * seed
log_evidence = -((np.log(beta) - np.log(10.0)) ** 2) - epochs
print(sigma_k)

# %%
sigma.runs.record_metrics(
    metrics_path,
    parameters={"beta": beta, "epochs": epochs, "seed": seed},
    metrics={
        "sigma": dict(zip(["setosa", "versicolor", "virginica"], sigma_k, strict=True)),
        "test_error": test_error,
        "coverage": float(np.clip(0.5 + 0.1 * np.log10(beta), 0, 1)),
        "log_evidence": log_evidence,
    },
)
