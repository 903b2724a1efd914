# %% [markdown]
# # A tiny notebook without `sigma`
#
# For the runner's tests: it starts in a kernel's start-up time, declares no `metrics_path`
# (so the sweep runner writes `metrics.json` itself) and raises on purpose when `beta`
# equals `fail_at_beta`.

# %%
import time

# %% tags=["parameters"]
beta: float = 1.0  # noise precision, > 0
epochs: int = 1  # training passes, ≥ 1
label: str = "a"  # a string parameter
flag: bool = False  # a bool parameter
fail_at_beta: float = -1.0  # raise when beta equals this (tests a failing run)
sleep_s: float = 0.0  # seconds to wait (tests a killed sweep), ≥ 0

# %%
time.sleep(sleep_s)

# %%
if beta == fail_at_beta:
    raise RuntimeError(f"failing on purpose at beta={beta}")

# %%
print(f"beta={beta} epochs={epochs} label={label} flag={flag}")
