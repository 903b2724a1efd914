"""The version of sigma (distribution ``keras-sigma``): the one place it is written.

``pyproject.toml`` reads it when the wheel is built (``[tool.setuptools.dynamic]``), and
``sigma.__version__`` is this value.
"""

__version__ = "0.3.0"
