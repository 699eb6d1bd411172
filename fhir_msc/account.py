"""Accounts: what a job read, and where each item went.

Every job that reads resources or rows keeps one: ``read == used + sum(skipped.values())``,
each skipped item counted under its reason, with the first few named as examples. Counting is
done where items are read, used and skipped, so a balanced account is a check, not a sum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_EXAMPLES = 5  # items named per reason; the count is always complete


@dataclass(frozen=True, kw_only=True)
class Account:
    """Items read = items used + items skipped, by reason."""

    read: int
    used: int
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first MAX_EXAMPLES items

    @property
    def balanced(self) -> bool:
        return self.read == self.used + sum(self.skipped.values())

    def describe(self, used: str = "used") -> str:
        """``9556 read = 9554 used + 2 unknown answer code + …`` (reasons by count, then name)."""
        parts = [f"{self.used} {used}"] + [f"{n} {reason}" for reason, n in by_count(self.skipped).items()]
        return f"{self.read} read = " + " + ".join(parts)


def by_count(skipped: Mapping[str, int]) -> dict[str, int]:
    """The reasons in an account's order: by count (most first), then by name."""
    return dict(sorted(skipped.items(), key=lambda item: (-item[1], item[0])))


class Tally:
    """An account being kept: count ``read``, ``used`` and ``skip`` as items go by."""

    __slots__ = ("read", "used", "skipped", "examples")

    def __init__(self) -> None:
        self.read = 0
        self.used = 0
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def skip(self, reason: str, example: str | None = None, count: int = 1) -> None:
        self.skipped[reason] += count
        if example is not None:
            named = self.examples.setdefault(reason, [])
            if len(named) < MAX_EXAMPLES:
                named.append(example)

    def account(self) -> Account:
        return Account(read=self.read, used=self.used, skipped=by_count(self.skipped),
                       examples={reason: list(named) for reason, named in self.examples.items()})
