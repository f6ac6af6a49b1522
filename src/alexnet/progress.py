"""Progress bars that suit both a terminal and a log file.

In a terminal tqdm redraws a few times a second; written to a file or a pipe (CI, `make demo >
log`, nohup) every redraw is another line of carriage returns. There the bar updates every 30 s.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar on stderr: live in a terminal, a line every 30 s otherwise."""
    tty = sys.stderr.isatty()
    kwargs.setdefault("dynamic_ncols", tty)
    kwargs.setdefault("mininterval", 0.5 if tty else 30.0)
    return tqdm(**kwargs)
