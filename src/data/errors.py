"""What a reader does with bad input: raise an error naming the file and the problem, or (where the config asks,
`on_error = "skip"`) skip it, log it and count it in a `Report`."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any, Literal

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


class CMHTFormatError(ValueError):
    """A dataset file that cannot be read as what it claims to be; the message names the file and the problem."""


@dataclasses.dataclass
class Report:
    """What indexing found wrong (problems), what it dropped (skipped, per kind) and what it ignored."""

    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, int] = dataclasses.field(default_factory=Counter)
    ignored: list[str] = dataclasses.field(default_factory=list)

    def add(self, problem: str, kind: str | None = None, count: int = 1) -> None:
        """Record a problem; with `kind`, also count `count` dropped items of that kind."""
        self.problems.append(problem)
        if kind is not None:
            self.skipped[kind] = self.skipped.get(kind, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {"problems": list(self.problems), "skipped": dict(self.skipped), "ignored": list(self.ignored)}


def report_problem(
    message: str, on_error: OnError, report: Report | None, kind: str | None, count: int = 1
) -> None:
    """Raise (on_error="raise") or record a skip; the single place where that policy is applied."""
    if on_error == "raise":
        raise CMHTFormatError(message)
    if on_error != "skip":
        raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
    log.warning("%s", message)
    if report is not None:
        report.add(message, kind, count)
