# %% [markdown]
# # A tiny notebook that imports TensorFlow
#
# For the kernel-environment test: importing TensorFlow and running one op is what prints
# TensorFlow's C++ start-up log lines on the kernel's stderr unless the kernel starts quiet.

# %% tags=["parameters"]
scale: float = 2.0  # multiplies the tensor

# %%
import tensorflow as tf

print(float(tf.reduce_sum(tf.ones((2, 2)) * scale)))
