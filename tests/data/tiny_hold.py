# %% [markdown]
# # A tiny notebook that can be held
#
# For the Ctrl-C test: with `hold` true it waits (up to two minutes) while the file named by
# the environment variable `TINY_HOLD_FILE` exists, so a sweep can be interrupted while this
# run is under way and resumed once the file is gone; with `hold` false it finishes at once.

# %%
import os
import time

# %% tags=["parameters"]
hold: bool = False  # wait while $TINY_HOLD_FILE exists
label: str = "a"  # a string parameter

# %%
deadline = time.time() + 120
if hold and os.environ.get("TINY_HOLD_FILE"):
    open(os.environ["TINY_HOLD_FILE"] + ".started", "w").close()  # the run is under way
while hold and os.path.exists(os.environ.get("TINY_HOLD_FILE", "")) and time.time() < deadline:
    time.sleep(0.1)
print(f"hold={hold} label={label}")
