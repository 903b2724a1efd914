# %% [markdown]
# # A tiny notebook that writes TensorFlow's start-up lines to its stderr
#
# For the kernel-stderr test: the lines TensorFlow writes to file descriptor 2 while its
# libraries load, before TF_CPP_MIN_LOG_LEVEL applies, written here by hand (so that the test
# does not depend on the CPU, and starts no TensorFlow), and one native line of the notebook's
# own, which must reach the terminal.

# %% tags=["parameters"]
label: str = "native line of the notebook"  # the line that must reach the terminal

# %%
import os

STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796580138.675898    5965 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796580138.805979    5965 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
]
for line in STARTUP:
    os.write(2, (line + "\n").encode())
os.write(2, f"{label} {6 * 7}\n".encode())
