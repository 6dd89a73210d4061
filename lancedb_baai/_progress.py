"""When to show a progress bar: asked for, or a large input in an interactive session."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

AUTO_MIN_TEXTS = 1000


def _interactive() -> bool:
    if os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def wanted(show_progress: bool | None, total: int) -> bool:
    """``True``/``False`` are obeyed; ``None`` means on for large inputs when someone is watching."""
    if show_progress is not None:
        return show_progress and total > 0
    return total >= AUTO_MIN_TEXTS and _interactive()


def bar(enabled: bool, total: int, desc: str):
    """A ``tqdm.auto`` bar counting texts (renders in notebooks and terminals), or a no-op."""
    if not enabled:
        return nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", leave=False)
