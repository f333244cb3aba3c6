"""Fenwick (binary indexed) tree over non-negative weights: O(log N) update, prefix sum and weighted draw.

Used by the sampling policy so that drawing the next pair and removing a labelled pair stay O(log N) at
N = 1,000,000 (a numpy cumsum per draw would be O(N)).
"""

from __future__ import annotations

import numpy as np


class FenwickTree:
    """Weights w[0..n-1] >= 0 with point updates, total and inverse-CDF lookup.

    ``find(u)`` returns the smallest i with w[0] + ... + w[i] > u, for 0 <= u < total.
    """

    __slots__ = ("n", "_tree", "_weights", "_top")

    def __init__(self, weights: np.ndarray) -> None:
        weights = np.asarray(weights, dtype=float)
        if np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise ValueError("FenwickTree weights must be finite and non-negative")
        self.n = int(weights.size)
        self._weights = weights.copy()
        # Vectorised O(n) construction: node i holds w(i - lowbit(i), i] = prefix[i] - prefix[i - lowbit(i)].
        prefix = np.concatenate([[0.0], np.cumsum(weights)])
        idx = np.arange(1, self.n + 1)
        self._tree = np.concatenate([[0.0], prefix[idx] - prefix[idx - (idx & -idx)]])
        self._top = 1 << max(self.n.bit_length() - 1, 0) if self.n else 0

    def weights(self) -> np.ndarray:
        return self._weights.copy()

    def weight(self, i: int) -> float:
        return float(self._weights[i])

    def total(self) -> float:
        s, i = 0.0, self.n
        tree = self._tree
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    def set(self, i: int, value: float) -> None:
        if value < 0:
            raise ValueError("weight must be non-negative")
        delta = value - self._weights[i]
        if delta == 0.0:
            return
        self._weights[i] = value
        j, tree, n = i + 1, self._tree, self.n
        while j <= n:
            tree[j] += delta
            j += j & -j

    def find(self, u: float) -> int:
        """Smallest index whose inclusive prefix sum exceeds ``u``."""
        pos, step, tree, n = 0, self._top, self._tree, self.n
        while step:
            nxt = pos + step
            if nxt <= n and tree[nxt] <= u:
                pos = nxt
                u -= tree[nxt]
            step >>= 1
        # Guard against float round-off landing on a zero-weight slot.
        pos = min(pos, n - 1)
        while self._weights[pos] == 0.0 and pos > 0:
            pos -= 1
        while self._weights[pos] == 0.0 and pos < n - 1:
            pos += 1
        return pos

    def sample(self, rng: np.random.Generator) -> int:
        total = self.total()
        if total <= 0:
            raise ValueError("cannot sample from an empty FenwickTree")
        return self.find(rng.random() * total)
