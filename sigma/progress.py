"""Progress bars for long work: a tqdm bar over batches that appears only once the work has
taken a few seconds, silent on request.

``progress``: None (the default: a bar once the work takes :data:`DELAY` seconds, so quick
calls print nothing), True (a bar at once), False (never). :func:`mode` sets it for a block of
calls — :class:`sigma.Laplace` runs its fit and every prediction under its own ``progress=``.
"""

from __future__ import annotations

import contextlib
import contextvars

from tqdm import tqdm  # plain text bars: tqdm.auto warns in kernels without ipywidgets

DELAY = 3.0  # seconds of work before an automatic bar appears
_MODE: contextvars.ContextVar = contextvars.ContextVar("sigma_progress", default=None)


@contextlib.contextmanager
def mode(progress):
    """Bars under this block: None (automatic), True (always), False (never)."""
    token = _MODE.set(progress)
    try:
        yield
    finally:
        _MODE.reset(token)


def check(progress) -> bool | None:
    """``progress`` validated: None, True or False (ValueError naming it otherwise)."""
    if progress is None or isinstance(progress, bool):
        return progress
    raise ValueError(f"progress must be True, False or None (automatic), got {progress!r}")


def bar(iterable=None, *, total=None, desc=None, progress=None):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``) following ``progress`` or,
    when it is None, the mode of the enclosing :func:`mode` block."""
    chosen = _MODE.get() if progress is None else progress
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=chosen is False,
        delay=0.0 if chosen else DELAY,
        leave=False,
    )
