"""Reading the shared pairwise-preference schema (shared/data/README.md) into oriented pools.

Orientation: "tuned" is response B's model for --base/--tuned (items of the reverse order are flipped), and
the lexicographically larger model name for --all-pairs. Votes and judge verdicts are mapped to "1 = tuned
better", tie = 0.5.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiebreak.sampler.replay import ReplayPool

REQUIRED_FIELDS = ("human_votes", "model_a", "model_b")
VOTE_VALUE = {"A": 0.0, "B": 1.0, "tie": 0.5}  # seen from B's side


class DataError(ValueError):
    """Bad input file or selection; the message names the problem and the valid choices."""


@dataclass(frozen=True)
class OrientedPool:
    base: str
    tuned: str
    pool: ReplayPool
    judges: tuple[str, ...]


def jsonl_rows(path: Path, error: Callable[[str], Exception] = DataError) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON Lines file; a line that is not JSON raises
    ``error("PATH:LINE: not valid JSON (why)")`` (the CLI passes its BadInput: exit code 2)."""
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            yield lineno, value


def load_items(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    items = []
    for lineno, row in jsonl_rows(path):
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)} "
                            f"(schema: shared/data/README.md)")
        votes = row["human_votes"]
        if not isinstance(votes, list) or not votes or any(v not in VOTE_VALUE for v in votes):
            raise DataError(f"{path}:{lineno}: human_votes must be a non-empty list of \"A\", \"B\", \"tie\"")
        items.append(row)
    if not items:
        raise DataError(f"{path}: no items")
    return items


def judge_names(items: list[dict]) -> list[str]:
    names: set[str] = set()
    for row in items:
        names.update((row.get("judges") or {}).keys())
    return sorted(names)


def item_slices(row: dict, field: str) -> tuple[str, ...]:
    """The slices of one item: the value at a dotted path (``slices``, ``meta.category``), a string or a list
    of strings; missing or null means the item is in no slice."""
    value: object = row
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value))
    raise DataError(f"item {row.get('id', '?')}: {field} must be a string or a list of strings (got {value!r})")


def _verdict_value(verdict: str | None) -> float:
    """A judge's recorded verdict seen from B's side; NaN when it gave none (or one outside A/B/tie)."""
    return np.nan if verdict is None else VOTE_VALUE.get(verdict, np.nan)


def _oriented(rows: list[tuple[dict, bool]], base: str, tuned: str, judges: list[str],
              slices_from: str | None = None) -> OrientedPool:
    votes, jv = [], []
    slices = tuple(item_slices(row, slices_from) for row, _ in rows) if slices_from else None
    for row, flip in rows:
        v = np.array([VOTE_VALUE[x] for x in row["human_votes"]])
        votes.append(1.0 - v if flip else v)
        verdicts: dict[str, Any] = row.get("judges") or {}
        f = np.array([_verdict_value(verdicts.get(j)) for j in judges], dtype=float)
        jv.append(1.0 - f if flip else f)
    judge_votes = np.array(jv, dtype=float).reshape(len(rows), len(judges))
    return OrientedPool(base, tuned, ReplayPool(tuple(votes), judge_votes, slices), tuple(judges))


def select_pools(items: list[dict], base: str | None = None, tuned: str | None = None,
                 all_pairs: bool = False, min_items: int = 1,
                 judges: list[str] | None = None, slices_from: str | None = None) -> list[OrientedPool]:
    available = judge_names(items)
    if judges is None:
        judges = available
    unknown = [j for j in judges if j not in available]
    if unknown:
        raise DataError(f"unknown judge(s) {', '.join(unknown)}; valid: {', '.join(available) or '(none in file)'}")
    models = sorted({m for r in items for m in (r["model_a"], r["model_b"]) if m is not None})
    if all_pairs:
        if base or tuned:
            raise DataError("--all-pairs cannot be combined with --base/--tuned")
        groups: dict[tuple[str, str], list[tuple[dict, bool]]] = defaultdict(list)
        for r in items:
            a, b = r["model_a"], r["model_b"]
            if a is None or b is None or a == b:
                continue
            lo, hi = sorted((a, b))
            groups[(lo, hi)].append((r, b != hi))  # tuned = larger name; flip when it is A
        pools = [_oriented(rows, lo, hi, judges, slices_from) for (lo, hi), rows in sorted(groups.items())
                 if len(rows) >= min_items]
        if not pools:
            best = max((len(v) for v in groups.values()), default=0)
            raise DataError(f"no model pair has >= {min_items} items (largest has {best}); lower --min-items")
        return pools
    if base or tuned:
        if not (base and tuned):
            raise DataError("give both --base and --tuned (or --all-pairs)")
        for name, flag in ((base, "--base"), (tuned, "--tuned")):
            if name not in models:
                raise DataError(f"{flag} {name!r} is not a model in this file; valid: {', '.join(models)}")
        rows = [(r, r["model_b"] != tuned) for r in items
                if {r["model_a"], r["model_b"]} == {base, tuned} and r["model_a"] != r["model_b"]]
        if len(rows) < max(min_items, 1):
            raise DataError(f"the pair {base} / {tuned} has {len(rows)} items (need >= {max(min_items, 1)}); "
                            f"pick another pair or lower --min-items")
        return [_oriented(rows, base, tuned, judges, slices_from)]
    # No selection: the whole file is one pool, response B = "tuned" as recorded.
    rows = [(r, False) for r in items]
    return [_oriented(rows, "A", "B", judges, slices_from)]
