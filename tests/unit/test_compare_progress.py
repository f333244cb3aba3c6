"""`tiebreak compare`'s progress line: counts, an ETA from the measured rate, no silent minutes."""

from __future__ import annotations

from tiebreak.services.commands.progress import ProgressLine, Rate, fmt_seconds


def _st(status, made=0, pairs=0, judged=0, labels=0, n=40):
    return {"status": status, "n_pairs": n, "generated": pairs, "judged": judged, "labels": labels, "votes": judged,
            "estimate": None, "interval": [0.0, 1.0], "decision": "running",
            "progress": {"generated": made, "to_generate": 2 * n}}


def test_eta_is_what_is_left_at_the_measured_rate():
    r = Rate()
    r.update(100.0, 4)
    assert r.eta_s(80) is None                 # nothing measured yet
    r.update(110.0, 9)                         # 5 outputs in 10 s
    r.update(130.0, 9)                         # a pause does not change the rate
    assert r.eta_s(80) == (80 - 9) / 0.5
    assert fmt_seconds(142) == "2 min 22 s" and fmt_seconds(7) == "7 s" and fmt_seconds(7260) == "2 h 01 min"


def test_generating_then_judging_lines_with_eta_and_a_line_at_least_every_10_s():
    p = ProgressLine(every_s=10.0)
    first = p.line(_st("generating", made=0), 0.0)
    assert first == "generating: 0/80 outputs (0/40 pairs), ETA — · labels 0"
    assert p.line(_st("generating", made=0), 5.0) is None            # nothing new, 5 s: quiet
    assert p.line(_st("generating", made=0), 10.0) is not None       # ... but never 10 s of silence
    line = p.line(_st("generating", made=20, pairs=9, labels=1), 20.0)
    assert line == "generating: 20/80 outputs (9/40 pairs), ETA 1 min 00 s · labels 1"   # 1 output/s, 60 left
    line = p.line(_st("generating", made=30, pairs=14, judged=4, labels=1), 25.0)      # votes while generating
    assert line == "generating: 30/80 outputs (14/40 pairs, 4 voted), ETA 42 s · labels 1"   # 30 in 25 s
    line = p.line(_st("judging", made=80, pairs=40, judged=10, labels=3), 30.0)
    assert line.startswith("judging: 10/40 pairs voted, ETA — · labels 3")
    line = p.line(_st("judging", made=80, pairs=40, judged=20, labels=3), 40.0)
    assert line.startswith("judging: 20/40 pairs voted, ETA 20 s")  # 10 pairs in 10 s, 20 left
    ready = _st("ready", judged=40, labels=4)
    assert p.line(ready, 41.0).startswith("ready: votes 40/40, labels 4")
    assert p.line(ready, 99.0) is None       # a finished machine: a line per change only
