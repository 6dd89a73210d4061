"""What serves a name, since which version, and what it replaced: the one swap/rollback history.

The in-process lifecycle (:func:`lancedb_baai.swap` / :func:`lancedb_baai.rollback`, kept
in the engine cache with the engines it may return to) and the server (kept in its state
file, so every worker and a restart follow it) move through the same states with the
same rules: a swap makes the new model current and pushes the old one, a rollback pops
it, each bumps the version, and only the last ``depth`` models are remembered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class NothingToRollBack(ValueError):
    """A rollback of a name that was never swapped (or whose history was let go)."""


@dataclass(frozen=True)
class History:
    """The model serving a name (``served``), its ``version``, and the models before it, oldest first."""

    served: str
    version: int = 0
    previous: tuple[str, ...] = field(default_factory=tuple)

    def swapped(self, new: str, depth: int) -> History:
        """``new`` serves from now on; the last ``depth`` models before it are remembered."""
        kept = (*self.previous, self.served)[-depth:] if depth > 0 else ()
        return History(new, self.version + 1, kept)

    def rolled_back(self, what: str = "") -> History:
        """The model before the current one serves again (``what``: the name in the error)."""
        if not self.previous:
            raise NothingToRollBack(f"nothing to roll back for {what or repr(self.served)}: it was never swapped")
        return History(self.previous[-1], self.version + 1, self.previous[:-1])

    def entry(self) -> dict[str, Any]:
        """As a server's state file records it."""
        return {"served": self.served, "version": self.version, "history": list(self.previous)}

    @classmethod
    def of_entry(cls, entry: dict[str, Any] | None, served: str) -> History:
        """The history a state file ``entry`` records (``served`` at version 0 when there is none)."""
        entry = entry or {}
        return cls(entry.get("served", served), int(entry.get("version", 0)), tuple(entry.get("history", ())))
