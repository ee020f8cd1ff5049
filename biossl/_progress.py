"""The one progress-bar factory: tqdm on stderr when it is a terminal, nothing otherwise.

No torch and no scanpy here, so every module (streaming reads, propagation, training) can use it.
"""

from __future__ import annotations

import contextlib
import os
import sys


def progress_bar(total: int, desc: str, enabled: bool | None = None, *, unit: str = "it", min_total: int = 0):
    """A tqdm bar on stderr, or None.

    Parameters
    ----------
    total
        Number of updates the bar expects.
    desc
        Label shown before the bar.
    enabled
        True shows the bar, False hides it; None shows it when stderr is a terminal and ``total >= min_total``.
    unit
        What one update counts (``"step"``, ``"it"``).
    min_total
        With ``enabled=None``, smaller jobs get no bar.
    """
    if enabled is None:
        enabled = sys.stderr.isatty() and total >= min_total
    if not enabled:
        return None
    from tqdm.auto import tqdm

    size = {}
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if 0 in os.get_terminal_size(sys.stderr.fileno()):  # a terminal without a size: tqdm would hide the bar
            size = {"ncols": 100, "nrows": 24}
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, **size)
