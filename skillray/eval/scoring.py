"""Answer extraction and scoring: math-verify for math answers, reasoning-gym's scorers for procedural tasks.

Extraction (:func:`extract_answer`) takes, in this order:

1. the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced);
2. the text after the last ``####`` (GSM8K style);
3. the text after the last "final answer is / answer: / answer is" phrase, to the end of its line
   (in an output cut at max_new_tokens, rules 2 and 3 ignore the unfinished last line);
4. only for outputs that ended on their own (not cut at max_new_tokens): the last non-empty
   line: what follows its last ``=``, and of that the last number if it holds one, else the
   line itself when short (<= 60 characters).

The result is cleaned (``$``, ``**``, a trailing full stop removed). The source is recorded
("boxed", "hashes", "phrase", "last_line") so tables can tell formatted answers from guesses.

Math scoring parses the reference (as LaTeX in ``$...$``, falling back to the raw string) and
the extracted answer (inside ``\\boxed{}``) with math-verify and calls ``verify(gold, answer)``:
``0.5 == \\frac{1}{2}``, ``(x+1)^2 == x^2+2x+1``, ``1,000 == 1000``; ``\\pi != 3.14``.
Procedural scoring calls the task's own ``score_answer(answer, entry)``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE = re.compile(r"(?i)\b(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)")
_HASHES = re.compile(r"####\s*(.+)")
_EMPTY_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Extracted:
    """An extracted final answer: the string (None when nothing was found) and where it came from."""

    answer: str | None
    source: str | None  # "boxed" | "hashes" | "phrase" | "last_line" | None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` with balanced braces; None if there is none
    (or the last one is never closed, e.g. cut by max_new_tokens)."""
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for j in range(start, len(text)):
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:j]
    return None


def _clean(s: str) -> str:
    """Strip markdown bold, math delimiters around the whole answer and a trailing full stop."""

    def period(x: str) -> str:
        x = x.strip()
        return x[:-1].rstrip() if x.endswith(".") else x

    s = period(s.replace("**", ""))
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a) : len(s) - len(b)].strip()
    return period(s.strip("$ "))


def last_number(s: str) -> str | None:
    """The last number in ``s`` (integers, decimals, a/b fractions; thousands commas kept)."""
    found = _NUMBER.findall(s)
    return found[-1].rstrip(",") if found else None


def extract_answer(text: str, finished: bool = True) -> Extracted:
    """The final answer of a model output (see the module doc for the order of the rules).

    ``finished=False`` (the output was cut at max_new_tokens) ignores the cut last line and
    skips the last-line rule: a cut output has no final line, and its last number is usually
    from the working. A closed ``\\boxed{}`` still counts.
    """
    if not text or not text.strip():
        return Extracted(None, None)
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return Extracted(_clean(boxed), "boxed")
    text = _EMPTY_BOX.sub("", text)  # "The answer is \\boxed{}." names no answer
    if not finished:  # the last line of a cut output may end mid-answer ("... is 87" of 874): drop it
        text = text[: max(0, text.rfind("\n"))]
    hashes = _HASHES.findall(text)
    if hashes and _clean(hashes[-1]):
        return Extracted(_clean(hashes[-1]), "hashes")
    phrases = _PHRASE.findall(text)
    if phrases and _clean(phrases[-1]):
        return Extracted(_clean(phrases[-1]), "phrase")
    if not finished:
        return Extracted(None, None)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:  # e.g. the output was only an empty "\\boxed{}"
        return Extracted(None, None)
    last = lines[-1]
    tail = last.rsplit("=", 1)[-1] if "=" in last else last
    num = last_number(tail)
    if num is not None:
        return Extracted(num, "last_line")
    tail = _clean(tail)
    if tail and len(tail) <= 60 and not re.search(r"(?i)\banswer\b", tail):  # "The answer is" names none
        return Extracted(tail, "last_line")
    return Extracted(None, None)


# ----------------------------------------------------------------------------- math


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    t = _timeout()
    parsed = parse(f"${gold}$", parsing_timeout=t)
    if not parsed:
        parsed = parse(gold, parsing_timeout=t)
    return parsed


def math_equal(gold: str, answer: str | None) -> bool:
    """Whether ``answer`` (an extracted final answer) equals the reference ``gold`` by math-verify."""
    from math_verify import parse, verify

    if answer is None or not str(answer).strip():
        return False
    g = _parse_gold(str(gold))
    if not g:
        raise ValueError(f"math-verify cannot parse the reference answer {gold!r}; fix the benchmark's answer field")
    t = _timeout()
    a = parse("\\boxed{" + str(answer) + "}", parsing_timeout=t)
    if not a:
        return False
    return bool(verify(g, a, timeout_seconds=t))


# ----------------------------------------------------------------------------- procedural

_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")


def plain_candidates(answer: str) -> list[str]:
    """Plain-text readings of an extracted answer for exact-match scorers: as is, LaTeX markup
    removed (``\\frac{a}{b}`` -> ``a/b``, ``\\text{x}`` -> ``x``, ``\\times`` -> ``×``), and its last number."""
    out = [answer.strip()]
    s = _LATEX_FRAC.sub(r"\1/\2", answer)
    s = _LATEX_TEXT.sub(r"\1", s)
    s = s.replace("\\times", "×").replace("\\cdot", "*").replace("\\,", "").replace("\\!", "").replace("\\ ", " ")
    s = s.replace("\\left", "").replace("\\right", "")
    s = " ".join(s.split())
    out.append(s)
    num = last_number(s)
    if num is not None and num != s:
        out.append(num)
    seen: list[str] = []
    for x in out:
        if x and x not in seen:
            seen.append(x)
    return seen


def procedural_score(dataset, entry: dict, answer: str | None) -> float:
    """reasoning-gym's ``score_answer`` of the best plain reading of ``answer`` (0.0 when none)."""
    if answer is None or not answer.strip():
        return 0.0
    return max(float(dataset.score_answer(c, entry)) for c in plain_candidates(answer))
