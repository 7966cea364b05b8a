"""The offline default corpus: procedurally generated reasoning tasks (reasoning-gym) with worked traces.

Each record is a two-turn chat: a reasoning-gym question and a worked solution trace that
ends with the item's answer as ``Final answer: \\boxed{...}`` (what the eval asks for). The
task name is the human skill label (``Record.skill``). Besides the task, every trace has a
*style* drawn per record, independently of the task, from a seeded RNG, and recorded in
``Record.metadata`` (the planted factors interpret compares directions with):

- ``verbosity`` (str): ``terse`` = the steps on one line; ``steps`` = an opening line and one
  numbered line per step.
- ``check`` (bool): whether a verification of the result follows the steps.
- ``notation`` (str): ``prose`` = steps in words ("Add 12 and 7 to get 19."); ``symbolic`` =
  as equations ("12 + 7 = 19").
- ``length`` (int): characters of the assistant turn (a consequence of the above, not drawn).

How each task's trace is made (from the item's ``metadata``):

- basic_arithmetic, chain_sum, products: the expression's operations in evaluation order
  (innermost first, * and / before + and -; / is floor division, as reasoning-gym's).
- simple_equations: collect the variable's terms, move the constant, divide by the coefficient;
  the check substitutes the solution into the original equation.
- fraction_simplification: the gcd by Euclid's algorithm, then both parts divided by it.
- gcd: Euclid's algorithm; lcm: the gcd, then a * b / gcd (folded over more numbers).
- count_primes: each number of the range marked prime or not (the primes listed for ranges
  over 40 numbers), then counted.
- letter_counting: the letter's count in each word (case-insensitive), then the sum.
- leg_counting: legs per animal (reasoning-gym's table) times the count, then the sum.
- spell_backward: the word's letters, then the same letters in reverse order.

Any other reasoning-gym task has no worked trace: its assistant turn is the task's own chain
of thought where it has one (gsm_symbolic's ``answer_cot``), else nothing but the final
answer, and its style keys are null (no style is planted in it: interpret leaves those records out
of the style factors) beside its ``length``.

Difficulty is set per task with ``corpus.task_options`` (reasoning-gym config keyword
arguments, validated here; the procedural eval uses the same options). Seeded and offline.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Callable

from skillray.config import CorpusConfig
from skillray.corpus.records import CorpusError, Record

STYLE_LEVELS: dict[str, tuple] = {
    "verbosity": ("terse", "steps"),
    "check": (False, True),
    "notation": ("prose", "symbolic"),
}


@dataclass(frozen=True)
class Step:
    """One step of a worked solution, in words and as an equation."""

    prose: str
    symbolic: str


@dataclass(frozen=True)
class Solution:
    """A task item's worked solution: its steps, a verification step, and the boxed final answer."""

    steps: tuple[Step, ...]
    check: Step
    answer: str


# ----------------------------------------------------------------------------- reasoning-gym


def task_options_error(task: str, options: dict, where: str) -> str | None:
    """Why ``options`` are not valid reasoning-gym config keywords of ``task`` (None when they are)."""
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        return f"{where}: unknown reasoning-gym task {task!r}; available: {sorted(DATASETS)}"
    cfg_cls = DATASETS[task][1]
    allowed = {f.name for f in dataclasses.fields(cfg_cls)} - {"seed", "size"}
    bad = sorted(set(options) - allowed)
    if bad:
        return f"{where}: task {task!r} has no option(s) {bad}; its options are {sorted(allowed)}"
    return None


def create_task_dataset(task: str, size: int, seed: int, options: dict | None, where: str):
    """``reasoning_gym.create_dataset(task, size=, seed=, **options)``; bad options raise a
    :class:`CorpusError` naming ``where``, the task and the option."""
    try:
        import reasoning_gym
    except ImportError:
        raise RuntimeError("procedural tasks need reasoning-gym: pip install reasoning-gym") from None
    options = dict(options or {})
    err = task_options_error(task, options, where)
    if err:
        raise CorpusError(err)
    try:
        return reasoning_gym.create_dataset(task, size=size, seed=seed, **options)
    except (AssertionError, TypeError, ValueError) as e:  # reasoning-gym validates its configs with assert
        raise CorpusError(f"{where}: task {task!r}: options {options} are rejected by reasoning-gym: {e or type(e).__name__}") from None


# ----------------------------------------------------------------------------- trace builders

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "/"}
_OP_WORDS = {"+": ("Add", "and"), "-": ("Subtract", "from"), "*": ("Multiply", "by"), "/": ("Divide", "by")}


def _op_step(a: int, op: str, b: int, c: int) -> Step:
    verb, link = _OP_WORDS[op]
    prose = f"{verb} {b} from {a} to get {c}." if op == "-" else f"{verb} {a} {link} {b} to get {c}."
    return Step(prose, f"{a} {op} {b} = {c}")


def _arithmetic(expression: str) -> tuple[list[Step], int]:
    """Steps of evaluating an integer expression (``/`` = floor division, like reasoning-gym)."""
    steps: list[Step] = []

    def ev(node) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            op = _OPS[type(node.op)]
            c = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
            if c is None:
                raise ValueError("division by zero")
            steps.append(_op_step(a, op, b, c))
            return c
        raise ValueError(f"unsupported expression part {ast.dump(node)[:60]}")

    tree = ast.parse(expression.replace("/", "//").replace("×", "*"), mode="eval")
    return steps, ev(tree.body)


def _arithmetic_solution(entry: dict) -> Solution:
    expr = entry["metadata"]["expression"]
    steps, value = _arithmetic(expr)
    if not steps:
        steps = [Step(f"The expression is just {value}.", f"{expr} = {value}")]
    return Solution(tuple(steps), Step(f"Evaluating {expr} again gives {value}.", f"{expr} = {value}"), str(value))


def _simple_equation_solution(entry: dict) -> Solution:
    import sympy

    md = entry["metadata"]
    var = sympy.Symbol(md["variable"])
    lhs_s, rhs_s = md["equation"].split("=")
    lhs, rhs = sympy.sympify(lhs_s, locals={md["variable"]: var}), sympy.sympify(rhs_s, locals={md["variable"]: var})
    poly = sympy.Poly(lhs - rhs, var)
    a, b = (int(c) for c in poly.all_coeffs()) if poly.degree() == 1 else (None, None)
    if a is None or a == 0:
        raise ValueError(f"not a linear equation: {md['equation']}")
    c = -b  # a*x = c
    x = sympy.Rational(c, a)
    v = md["variable"]
    steps = []
    lhs_terms = sympy.Add.make_args(sympy.expand(lhs))
    var_terms = [t for t in lhs_terms if t.has(var)]
    if len(var_terms) > 1:
        steps.append(Step(f"Combine the {v} terms: {' + '.join(map(str, var_terms))} is {sympy.expand(sum(var_terms))}.",
                          f"{' + '.join(map(str, var_terms))} = {sympy.expand(sum(var_terms))}"))  # fmt: skip
    const = int(sum(t for t in lhs_terms if not t.has(var)) or 0)
    r = int(rhs)
    ax = f"{a}*{v}" if a != 1 else v
    if const:
        op, k = ("-", const) if const > 0 else ("+", -const)
        steps.append(Step(f"Move {const} to the right side: {ax} = {r} {op} {k} = {c}.", f"{ax} = {r} {op} {k} = {c}"))
    if a != 1:
        steps.append(Step(f"Divide both sides by {a}: {v} = {c} / {a} = {x}.", f"{v} = {c} / {a} = {x}"))
    if not steps:
        steps.append(Step(f"The equation already gives {v} = {x}.", f"{v} = {x}"))
    lhs_val = lhs.subs(var, x)
    sub = lhs_s.strip().replace(v, f"({x})" if x < 0 else str(x))
    check = Step(f"Put {v} = {x} back in: {sub} is {lhs_val}, which equals {r}.", f"{sub} = {lhs_val} = {r}")
    return Solution(tuple(steps), check, str(x))


def _euclid(a: int, b: int) -> tuple[list[Step], int]:
    steps = []
    x, y = max(a, b), min(a, b)
    while y:
        q, r = divmod(x, y)
        steps.append(Step(f"{x} divided by {y} is {q} with remainder {r}.", f"{x} = {q} * {y} + {r}"))
        x, y = y, r
    return steps, x


def _fraction_solution(entry: dict) -> Solution:
    md = entry["metadata"]
    n, d = int(md["numerator"]), int(md["denominator"])
    sn, sd = int(md["simplified_numerator"]), int(md["simplified_denominator"])
    steps, g = _euclid(n, d)
    steps.append(Step(f"So the greatest common divisor of {n} and {d} is {g}.", f"gcd({n}, {d}) = {g}"))
    steps.append(Step(f"Divide {n} by {g} to get {n // g}, and {d} by {g} to get {d // g}.",
                      f"{n} / {g} = {n // g}, {d} / {g} = {d // g}"))  # fmt: skip
    if (n // g, d // g) != (sn, sd):
        raise ValueError("gcd reduction disagrees with the item")
    check = Step(f"{sn} and {sd} share no factor above 1, so {sn}/{sd} is in lowest terms.", f"gcd({sn}, {sd}) = {math.gcd(sn, sd)}")
    answer = str(entry["answer"]).strip().strip("$")
    return Solution(tuple(steps), check, answer)


def _numbers(md: dict) -> list[int]:
    return [int(x) for x in md["numbers"]]


def _gcd_solution(entry: dict) -> Solution:
    nums = _numbers(entry["metadata"])
    g, steps = nums[0], []
    for b in nums[1:]:
        s, g2 = _euclid(g, b)
        steps += s + [Step(f"So gcd({g}, {b}) is {g2}.", f"gcd({g}, {b}) = {g2}")]
        g = g2
    check = Step(", ".join(f"{n} is {n // g} times {g}" for n in nums) + ".", ", ".join(f"{n} = {n // g} * {g}" for n in nums))
    return Solution(tuple(steps), check, str(g))


def _lcm_solution(entry: dict) -> Solution:
    nums = _numbers(entry["metadata"])
    m, steps = nums[0], []
    for b in nums[1:]:
        g = math.gcd(m, b)
        m2 = m * b // g
        steps.append(Step(f"The gcd of {m} and {b} is {g}.", f"gcd({m}, {b}) = {g}"))
        steps.append(Step(f"So the lcm is {m} times {b} divided by {g}, which is {m2}.", f"lcm({m}, {b}) = {m} * {b} / {g} = {m2}"))
        m = m2
    check = Step(", ".join(f"{m} is {m // n} times {n}" for n in nums) + ".", ", ".join(f"{m} = {m // n} * {n}" for n in nums))
    return Solution(tuple(steps), check, str(m))


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))


def _count_primes_solution(entry: dict) -> Solution:
    md = entry["metadata"]
    lo, hi = int(md["start"]), int(md["end"])
    primes = [n for n in range(lo, hi + 1) if _is_prime(n)]
    if hi - lo < 40:
        marks = [f"{n} {'is prime' if _is_prime(n) else 'is not'}" for n in range(lo, hi + 1)]
        steps = [Step("Go through the numbers: " + ", ".join(marks) + ".",
                      "primes in [" + f"{lo}, {hi}] = {{" + ", ".join(map(str, primes)) + "}")]  # fmt: skip
    else:
        steps = [Step("The primes in the range are " + (", ".join(map(str, primes)) or "none") + ".",
                      "primes in [" + f"{lo}, {hi}] = {{" + ", ".join(map(str, primes)) + "}")]  # fmt: skip
    steps.append(Step(f"That makes {len(primes)} primes.", f"count = {len(primes)}"))
    n_all = hi - lo + 1
    check = Step(f"Of the {n_all} numbers, {len(primes)} are prime and {n_all - len(primes)} are not.",
                 f"{len(primes)} + {n_all - len(primes)} = {n_all}")  # fmt: skip
    return Solution(tuple(steps), check, str(len(primes)))


def _letter_counting_solution(entry: dict) -> Solution:
    md = entry["metadata"]
    letter, words = str(md["target_letter"]).lower(), list(md["span"])
    counts = [w.lower().count(letter) for w in words]
    total = sum(counts)
    steps = [Step("Count the letter in each word: " + ", ".join(f'"{w}" has {c}' for w, c in zip(words, counts)) + ".",
                  ", ".join(f"{w}: {c}" for w, c in zip(words, counts)))]  # fmt: skip
    steps.append(Step(f"Adding them up gives {total}.", " + ".join(map(str, counts)) + f" = {total}"))
    hits = [w for w, c in zip(words, counts) if c]
    check = Step(f"The words with a \"{letter}\" are " + (", ".join(hits) or "none") + f", {total} letters in all.",
                 " + ".join(map(str, reversed(counts))) + f" = {total}")  # fmt: skip
    return Solution(tuple(steps), check, str(total))


def _leg_counting_solution(entry: dict) -> Solution:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    animals = dict(entry["metadata"]["animals"])
    parts = [(a, n, ANIMALS[a], n * ANIMALS[a]) for a, n in animals.items()]
    steps = [Step(f"{n} {a}{'s' if n != 1 else ''} with {legs} legs each have {t} legs.", f"{a}: {n} * {legs} = {t}")
             for a, n, legs, t in parts]  # fmt: skip
    total = sum(p[3] for p in parts)
    steps.append(Step(f"In total that is {total} legs.", " + ".join(str(p[3]) for p in parts) + f" = {total}"))
    check = Step("Adding in reverse order gives " + f"{total} again.", " + ".join(str(p[3]) for p in reversed(parts)) + f" = {total}")
    return Solution(tuple(steps), check, str(total))


def _spell_backward_solution(entry: dict) -> Solution:
    word = str(entry["metadata"]["word"])
    rev = word[::-1]
    steps = (Step(f"The letters of {word} are " + ", ".join(word) + ".", f"{word} = " + "-".join(word)),
             Step("Read from the last letter to the first: " + ", ".join(rev) + ".", "reversed = " + "-".join(rev)))  # fmt: skip
    check = Step(f"Reading {rev} backward gives {word} again.", f"reverse({rev}) = {word}")
    return Solution(steps, check, rev)


TRACE_BUILDERS: dict[str, Callable[[dict], Solution]] = {
    "basic_arithmetic": _arithmetic_solution,
    "chain_sum": _arithmetic_solution,
    "products": _arithmetic_solution,
    "simple_equations": _simple_equation_solution,
    "fraction_simplification": _fraction_solution,
    "gcd": _gcd_solution,
    "lcm": _lcm_solution,
    "count_primes": _count_primes_solution,
    "letter_counting": _letter_counting_solution,
    "leg_counting": _leg_counting_solution,
    "spell_backward": _spell_backward_solution,
}


def render(sol: Solution, verbosity: str, check: bool, notation: str) -> str:
    """The assistant turn of one style; always ends with ``Final answer: \\boxed{<answer>}``."""
    pick = (lambda s: s.prose) if notation == "prose" else (lambda s: s.symbolic)
    lines = [pick(s) for s in sol.steps]
    check_line = pick(sol.check)
    if verbosity == "steps":
        head = "Let's work through it step by step." if notation == "prose" else "Solution:"
        out = [head] + [f"Step {i}: {x}" for i, x in enumerate(lines, 1)]
        if check:
            out.append(f"Check: {check_line}")
    else:
        out = [(" " if notation == "prose" else "; ").join(lines)]
        if check:
            out[0] += (" Check: " if notation == "prose" else "; check: ") + check_line
    out.append(f"Final answer: \\boxed{{{sol.answer}}}")
    return "\n".join(out)


def draw_style(rng: random.Random) -> dict:
    """One record's planted style factors (each level equally likely, independent of the task)."""
    return {name: rng.choice(levels) for name, levels in STYLE_LEVELS.items()}


def trace_for(task: str, entry: dict, style: dict) -> str:
    """The worked trace of ``entry`` in ``style``; its boxed answer must score as correct for the item."""
    sol = TRACE_BUILDERS[task](entry)
    return render(sol, style["verbosity"], style["check"], style["notation"])


# ----------------------------------------------------------------------------- corpus


def _unworked_response(entry: dict) -> str:
    """A task without a trace builder: its own chain of thought where it has one, then the boxed answer."""
    cot = (entry.get("metadata") or {}).get("answer_cot")
    head = str(cot).strip() + "\n" if cot else ""
    return f"{head}Final answer: \\boxed{{{entry['answer']}}}"


def _record(cfg: CorpusConfig, rid: str, task: str, entry: dict, response: str, metadata: dict[str, Any]) -> Record:
    messages = [{"role": "user", "content": entry["question"]}, {"role": "assistant", "content": response}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return Record(id=rid, messages=tuple(messages), answer=str(entry["answer"]), skill=task, metadata=metadata)


def generate_corpus(cfg: CorpusConfig) -> list[Record]:
    """Generate ``records_per_task(task)`` records (task_sizes, else size_per_task) for each task; ids are ``<task>-<index>``.

    Each worked record's metadata: ``verbosity`` (str), ``check`` (bool), ``notation`` (str) drawn
    from ``Random(f"{seed}/{task}/{index}")``, and ``length`` (int, characters of the assistant turn);
    a task without a trace builder carries the same keys with null style (every record has every key).
    """
    for task in cfg.tasks:
        err = task_options_error(task, cfg.task_options.get(task, {}), "corpus.tasks / corpus.task_options")
        if err:
            raise CorpusError(err)
    from skillray.eval.scoring import procedural_score

    records: list[Record] = []
    for t, task in enumerate(cfg.tasks):
        # A distinct, reproducible seed per task so adding a task does not change the others.
        size = cfg.records_per_task(task)
        ds = create_task_dataset(task, size, cfg.seed * 1000 + t, cfg.task_options.get(task),
                                 f"corpus.task_options[{task!r}]")  # fmt: skip
        for i in range(size):
            entry = ds[i]
            rid = f"{task}-{i:05d}"
            if entry.get("answer") is None:
                raise CorpusError(f"task {task!r} item {i} has no answer; pick another task")
            if task not in TRACE_BUILDERS:
                response = _unworked_response(entry)
                unplanted = {k: None for k in STYLE_LEVELS}
                records.append(_record(cfg, rid, task, entry, response, {**unplanted, "length": len(response)}))
                continue
            style = draw_style(random.Random(f"{cfg.seed}/{task}/{i}"))
            try:
                sol = TRACE_BUILDERS[task](entry)
            except (ValueError, KeyError, ZeroDivisionError) as e:
                raise CorpusError(f"record {rid!r}: cannot build a worked trace ({e}); "
                                  f"change corpus.task_options[{task!r}]") from None  # fmt: skip
            if procedural_score(ds, entry, sol.answer) < 1.0:  # the trace's answer must be the item's
                raise CorpusError(f"record {rid!r}: the trace's answer {sol.answer!r} does not score as "
                                  f"{entry['answer']!r}; a trace builder bug")  # fmt: skip
            response = render(sol, style["verbosity"], style["check"], style["notation"])
            records.append(_record(cfg, rid, task, entry, response, {**style, "length": len(response)}))
    if cfg.limit is not None:
        records = records[: cfg.limit]
    return records
