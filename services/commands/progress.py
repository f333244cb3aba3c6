"""`tiebreak compare`'s progress line while the machines work: counts and an ETA from the measured rate.

A run's status (GET /v1/runs/{id}) says how far generation (``progress.generated`` outputs of
``progress.to_generate``) and judging (``judged`` of ``n_pairs``) are; ``ProgressLine`` turns successive
statuses into one line such as

    generating: 14/80 outputs (6/40 pairs, 4 voted), ETA 1 min 32 s · labels 2
    judging: 12/40 pairs voted, ETA 25 s · labels 5, estimate 0.640, interval (0.210, 0.950)

The ETA of a counter is (total − done) / rate, the rate measured from the first status in which that counter
was seen to the last one in which it grew (so a pause while nothing finishes does not speed it up); "ETA —"
until it has grown once. The line is due when a count changes, and at least every ``every_s`` seconds while the
run is still working (no silent minutes: a slow model still shows that time passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def fmt_seconds(s: float) -> str:
    """12 s, 1 min 32 s, 2 h 05 min."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


@dataclass
class Rate:
    """One counter's measured rate: done at the first sighting and at the last growth."""

    t0: float | None = None
    n0: int = 0
    t_last: float = 0.0
    n_last: int = 0

    def update(self, t: float, n: int) -> None:
        if self.t0 is None:
            self.t0, self.n0, self.t_last, self.n_last = t, n, t, n
        elif n > self.n_last:
            self.t_last, self.n_last = t, n

    def eta_s(self, total: int) -> float | None:
        """Seconds left at the measured rate; None before the counter has grown once."""
        if self.t0 is None or self.n_last <= self.n0 or self.t_last <= self.t0:
            return None
        rate = (self.n_last - self.n0) / (self.t_last - self.t0)
        return max(0.0, (total - self.n_last) / rate)


@dataclass
class ProgressLine:
    every_s: float = 10.0
    rates: dict[str, Rate] = field(default_factory=dict)
    _last_key: tuple | None = None
    _last_t: float = float("-inf")

    def _eta(self, name: str, t: float, done: int, total: int) -> str:
        r = self.rates.setdefault(name, Rate())
        r.update(t, done)
        eta = r.eta_s(total)
        return "ETA —" if eta is None else f"ETA {fmt_seconds(eta)}"

    def line(self, st: dict, t: float) -> str | None:
        """The line for status ``st`` seen at time ``t`` (seconds, any origin), or None when none is due."""
        progress = st.get("progress") or {}
        labels = f"labels {st['labels']}"
        est = st.get("estimate")
        if est is not None and st["labels"]:
            lo, hi = st["interval"]
            labels += f", estimate {est:.3f}, interval ({lo:.3f}, {hi:.3f})"
        if st["status"] == "generating":
            total = int(progress.get("to_generate") or 2 * st["n_pairs"])
            made = int(progress.get("generated") or 0)
            judged = int(st.get("judged") or 0)      # a pair is judged once its outputs exist: votes arrive now
            voted = f", {judged} voted" if judged else ""
            text = (f"generating: {made}/{total} outputs ({st['generated']}/{st['n_pairs']} pairs{voted}), "
                    f"{self._eta('generate', t, made, total)} · {labels}")
            key: tuple = ("generating", made, judged, st["labels"])
        elif st["status"] == "judging":
            text = (f"judging: {st['judged']}/{st['n_pairs']} pairs voted, "
                    f"{self._eta('judge', t, st['judged'], st['n_pairs'])} · {labels}")
            key = ("judging", st["judged"], st["labels"])
        else:
            lo, hi = st["interval"]
            text = (f"{st['status']}: votes {st['votes']}/{st['n_pairs']}, labels {st['labels']}, estimate "
                    f"{'—' if est is None else f'{est:.3f}'}, interval ({lo:.3f}, {hi:.3f}), decision {st['decision']}")
            key = (st["status"], st["votes"], st["labels"], st["decision"])
            if key == self._last_key:
                return None
            self._last_key, self._last_t = key, t
            return text
        if key == self._last_key and t - self._last_t < self.every_s:
            return None
        self._last_key, self._last_t = key, t
        return text
