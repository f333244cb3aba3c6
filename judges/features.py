"""Free jurors: text features of the two responses, as votes in [0, 1] that the calibration may weight.

Each feature judge votes ``p = sigmoid(s · (log φ(tuned) − log φ(base)))`` on a positive per-response statistic
φ (s = SHARPNESS, below): ½ when the responses do not differ, > ½ when the TUNED response has more of the
feature. A vote here is a direction of difference, not a verdict — whether "more" is better (longer
answers win on Vicuna-80; refusals win on HH-RLHF harmless) is what the calibration learns from the labels,
with the sign and weight per dataset (sampler/calibration.py's ridge allows negative weights).

AlpacaEval's length-controlled win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval") is the anchor:
length is a known confounder of LLM judges and at the same time a predictor of human preference, so it is
measured per dataset as a juror of its own instead of being assumed good or bad.

The features cost microseconds per pair (measured: CPU-seconds in ``JudgeVote.cpu_seconds``); none reads a
model. They see the responses as given (no truncation), less the sentences addressed to the judge
(judges/injection.py): an answer that tells its grader to "answer yes" must not also gain length and prompt
coverage from saying so (measured: the flip rate of the default jury under injection, docs/benchmarks.md).
"""

from __future__ import annotations

import ast
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from tiebreak.judges.injection import DEFAULT_INJECTION, strip_judge_directed
from tiebreak.judges.jury import JudgeVote, with_pointwise_injection

_WORD = re.compile(r"[a-z0-9']+")
_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)
_LIST = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+\S", re.M)
_HEADER = re.compile(r"^\s*#{1,6}\s+\S", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")
_TABLE = re.compile(r"^\s*\|.*\|\s*$", re.M)

# Refusal / hedging phrases (lower-case). Why phrases and not words: "sorry" or "cannot" inside an answer
# ("you cannot divide by zero") is content, "I cannot help with" is a refusal.
REFUSAL_MARKERS = (
    "i'm sorry", "i am sorry", "i apologize", "i cannot", "i can't", "i can not", "i won't", "i will not",
    "i'm not able", "i am not able", "i'm unable", "i am unable", "as an ai", "as a language model",
    "i don't think i should", "i'd rather not", "not appropriate", "i'm not comfortable", "i am not comfortable",
    "i'm not sure", "i am not sure", "i don't know", "it depends", "consult a professional", "seek professional",
    "i do not feel comfortable", "cannot provide", "can't provide", "not able to provide", "illegal",
)


def _words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def response_length(text: str) -> float:
    """Characters."""
    return float(len(text or ""))


def structure_count(text: str) -> float:
    """Markdown structure elements: list items, headers, code fences, bold spans, table rows."""
    t = text or ""
    return float(len(_LIST.findall(t)) + len(_HEADER.findall(t)) + t.count("```") // 2 + len(_BOLD.findall(t))
                 + len(_TABLE.findall(t)))


def refusal_count(text: str) -> float:
    """Occurrences of refusal / hedging phrases (REFUSAL_MARKERS)."""
    t = (text or "").lower().replace("’", "'")
    return float(sum(t.count(m) for m in REFUSAL_MARKERS))


def broken_code_count(text: str) -> float:
    """Fenced code blocks tagged python/py (or untagged and looking like Python) that ``ast.parse`` rejects."""
    n = 0
    for lang, body in _FENCE.findall(text or ""):
        lang = lang.lower()
        pythonish = lang in ("python", "py", "python3") or (
            lang == "" and re.search(r"^\s*(def |import |from \S+ import |class |print\()", body, re.M))
        if not pythonish:
            continue
        try:
            ast.parse(body)
        except (SyntaxError, ValueError):
            n += 1
    return float(n)


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def prompt_copy_share(text: str, prompt: str, n: int = 4) -> float:
    """Share of the response's word n-grams (n=4) that occur in the prompt: 0 = nothing copied, 1 = all."""
    r = _ngrams(_words(text), n)
    if not r:
        return 0.0
    return len(r & _ngrams(_words(prompt), n)) / len(r)


_STOP = frozenset("a an the of to in on for and or is are was were be it this that with as at by from what how why "
                  "which who do does did can could would should i you your my me we our they their".split())


def question_coverage(text: str, prompt: str) -> float:
    """Share of the prompt's content words (stop words removed) that the response uses."""
    q = {w for w in _words(prompt) if w not in _STOP and len(w) > 2}
    if not q:
        return 0.0
    return len(q & set(_words(text))) / len(q)


# Why sharpen: the sampler's calibration is a ridge regression on the votes, so a vote with a small spread is
# shrunk towards the label mean however informative it is (shrink factor n·Var(vote) / (n·Var(vote) + penalty)).
# Measured on the development sets (Vicuna-80 1,000 pairs, sampler penalty 20, cross-fitted): relative length
# as sigmoid(1·log ratio) explains 0.167 of the label variance, as sigmoid(3·log ratio) 0.300 (HH-RLHF: 0.026
# vs 0.021). A response twice as long as the other votes sigmoid(3 log 2) = 0.89.
SHARPNESS = 3.0


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def _ratio_vote(t: float, b: float, pseudo: float) -> float:
    """sigmoid(SHARPNESS · (log(t + c) − log(b + c))); c smooths zero counts."""
    return _sigmoid(SHARPNESS * (math.log(t + pseudo) - math.log(b + pseudo)))


def _share_vote(t: float, b: float) -> float:
    """sigmoid(2·SHARPNESS · (t − b)) for shares t, b in [0, 1]."""
    return _sigmoid(2 * SHARPNESS * (t - b))


@dataclass(frozen=True)
class FeatureSpec:
    stat: Callable[[str, str], float]  # (response, prompt) -> statistic
    vote: Callable[[float, float], float]  # (stat tuned, stat base) -> p in [0, 1]
    what: str


FEATURES: dict[str, FeatureSpec] = {
    "length": FeatureSpec(lambda r, q: response_length(r), lambda t, b: _ratio_vote(t, b, 1.0),
                          "relative length: sigmoid(3 · log(characters tuned / characters base))"),
    "structure": FeatureSpec(lambda r, q: structure_count(r), lambda t, b: _ratio_vote(t, b, 1.0),
                             "markdown structure (lists, headers, code fences, bold, tables), count ratio"),
    "refusal": FeatureSpec(lambda r, q: refusal_count(r), lambda t, b: _ratio_vote(t, b, 1.0),
                           "refusal / hedging phrases, count ratio (> ½: tuned refuses or hedges more)"),
    "broken_code": FeatureSpec(lambda r, q: broken_code_count(r), lambda t, b: _ratio_vote(t, b, 1.0),
                               "fenced Python blocks that do not parse, count ratio (> ½: tuned has more)"),
    "prompt_copy": FeatureSpec(prompt_copy_share, _share_vote,
                               "share of the response's word 4-grams copied from the prompt, difference"),
    "coverage": FeatureSpec(question_coverage, _share_vote,
                            "share of the prompt's content words used in the response, difference"),
}


class FeatureJudge:
    """A juror computed from the two texts (no model). Same ``vote`` signature as ``judges.jury.Judge``."""

    mode = "feature"

    def __init__(self, feature: str, harden: bool = True):
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; valid choices: {', '.join(FEATURES)}")
        self.feature = feature
        self.harden = harden  # compute on the responses less their sentences addressed to the judge
        self.spec = FEATURES[feature]
        self.name = f"feature:{feature}"

    def p_tuned_more(self, prompt: str, base: str, tuned: str) -> float:
        if self.harden:
            base, tuned = strip_judge_directed(base)[0], strip_judge_directed(tuned)[0]
        return float(self.spec.vote(self.spec.stat(tuned, prompt), self.spec.stat(base, prompt)))

    def vote(self, prompt: str, base: str, tuned: str, criterion: str = "overall", cache=None,
             inject: str | None = None, injection: str = DEFAULT_INJECTION) -> JudgeVote:
        """``cache`` is accepted and ignored (recomputing is cheaper than a lookup); ``inject`` appends the
        pointwise text of the payload ``injection`` to that response, as for the model judges' flip rate."""
        b, t = with_pointwise_injection(base, tuned, inject, injection)
        c0, t0 = time.process_time(), time.perf_counter()
        p = self.p_tuned_more(prompt or "", b or "", t or "")
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        if math.isnan(p):
            p = math.nan
        return JudgeVote(self.name, criterion, p, (p, p), 0.0, len(tuned or "") - len(base or ""), dt,
                         (None, None), False, cpu)


def feature_judges(names: list[str] | None = None) -> list[FeatureJudge]:
    return [FeatureJudge(n) for n in (names or list(FEATURES))]
