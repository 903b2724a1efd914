# %% [markdown]
# # A tiny notebook that imports TensorFlow
#
# For the kernel-environment test: importing TensorFlow and running one op prints TensorFlow's
# C++ start-up log lines on the kernel's stderr file descriptor on some CPUs; the cell also
# writes one such line itself, so that the test sees native stderr output on every machine.

# %% tags=["parameters"]
scale: float = 2.0  # multiplies the tensor

# %%
import os

import tensorflow as tf

# (the marker is computed, so that the cell's source shown in the HTML does not contain it)
os.write(2, f"I0000 00:00:1700000000.0 4242 port.cc:153] native log line {6 * 7}\n".encode())

print(float(tf.reduce_sum(tf.ones((2, 2)) * scale)))
