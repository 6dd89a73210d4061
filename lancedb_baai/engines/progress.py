"""When to show a progress bar: asked for, or a large input in an interactive session."""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext

AUTO_MIN_TEXTS = 1000
TINY_CALL = 32
"""Below this many texts no bar is shown even when asked: a query is not worth a bar."""


def _interactive() -> bool:
    if os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def wanted(show_progress: bool | None, total: int) -> bool:
    """``False`` is obeyed, ``True`` shows a bar for any call above a tiny one, and ``None``
    shows one for large inputs when someone is watching (never in CI)."""
    if show_progress is not None:
        return show_progress and total >= TINY_CALL
    return total >= AUTO_MIN_TEXTS and _interactive()


def bar(enabled: bool, total: int, desc: str):
    """A ``tqdm.auto`` bar counting texts (renders in notebooks and terminals), or a no-op."""
    if not enabled:
        return nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", leave=False)


class Announcement:
    """One line on stderr for a one-time step that takes long, as a download's progress line is.

    In a terminal the line ends with the time the step took once it is done; elsewhere (a
    log, a notebook) it is written whole when the step starts, so it is one line either way.
    """

    def __init__(self, message: str) -> None:
        self._start = time.perf_counter()
        self._open = _interactive()
        sys.stderr.write(message + ("" if self._open else "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self._open:
            sys.stderr.write(f" done in {time.perf_counter() - self._start:.1f}s\n")
            sys.stderr.flush()
            self._open = False
