"""Embedded data set: GSM8K-style multi-step arithmetic word problems, generated from a seed.

A problem is a short story that starts from one quantity and changes it step by step; the
worked solution has one sentence per operation, written ``a OP b = c`` so that a tiny
digit-level model can learn the arithmetic from the text alone. With ``solution_styles`` above 1
the worked solution is written in one of several styles (step order and wording), drawn from the
seed and the question alone.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from datamodules.records import Record

OPERATIONS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
MAX_STEPS = 4
DRAWS_PER_PROBLEM = 50
"""How many draws ``generate_splits`` may spend per requested problem before giving up."""
_ATTEMPTS = 1000
_FRACTIONS = {2: "half", 3: "a third", 4: "a quarter"}


class SolutionStyle(NamedTuple):
    """One way of writing a worked solution (see ``SyntheticConfig.solution_styles``)."""

    form: str  # where the equation goes: "inline" (in the sentence), "before" or "after" the sentence
    words: bool = False  # "3 times 4 is 12" instead of "3 * 4 = 12" (not with "inline")
    connector: str = ""  # joins equation and sentence: ", so " before, ", since " after
    first: str = ""  # opener of the first of several lines
    later: tuple[str, ...] = ("",)  # openers the later lines draw from
    alone: str = ""  # opener of a solution's only line
    grouped: bool = False  # two like steps in a row become one independent step first, in any valid order
    swap: bool = False  # operands of + and * may be written the other way round


# Ordered so that the first few already differ most; even one-line solutions differ in every style.
SOLUTION_STYLES = (
    SolutionStyle("inline"),  # the original template: "Tom has 3 + 4 = 7 cards now."
    SolutionStyle("before", connector=", so ", later=("Then ", "Next, ", ""), grouped=True),
    SolutionStyle("after", words=True, connector=", since ", later=("So ", "That means ", "Now "), grouped=True,
                  swap=True),
    SolutionStyle("inline", first="First, ", later=("Then ", "Next, ", "After that, "), alone="So ", swap=True),
    SolutionStyle("before", words=True, connector=", so ", first="We know ", later=("Then ", "Now ", "Next, "),
                  alone="We know ", swap=True),
    SolutionStyle("inline", later=("So ", "That means ", "Now "), alone="That means ", grouped=True, swap=True),
    SolutionStyle("after", connector=" because ", first="First, ", later=("Then ", "Next, ")),
    SolutionStyle("before", connector=". ", grouped=True, swap=True),
)
"""Style 0 is the original single template; ``solution_styles=k`` draws among the first k."""
_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
# Two like steps in a row, grouped: the operation that combines their numbers, and its sentence.
_GROUPED = {
    "add": ("+", "The two increases add up to {eq}."),
    "sub": ("+", "The two decreases add up to {eq}."),
    "mul": ("*", "The two factors multiply to {eq}."),
    "div": ("*", "The two divisors multiply to {eq}."),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the embedded data set."""

    seed: int = 1234
    """Generator seed; the same seed gives identical splits."""
    num_train: int = 20000
    """Training problems."""
    train_offset: int = 0
    """Training problems of the stream skipped before the first one kept: ``num_train`` problems
    from ``train_offset`` on are disjoint from a run's first ``train_offset``, so one model can be
    pre-trained on the first problems and fine-tuned on fresh ones (scripts/compare.py does)."""
    num_val: int = 200
    """Validation problems."""
    num_test: int = 500
    """Test problems; which ones they are does not depend on the other sizes."""
    min_steps: int = 1
    """Fewest arithmetic operations (worked-solution lines) in a problem, 1..4."""
    max_steps: int = 3
    """Most arithmetic operations in a problem, min_steps..4."""
    max_operand: int = 12
    """Largest number a sentence of the story introduces (counts, prices, multipliers)."""
    max_value: int = 200
    """Every intermediate and final value stays within [0, max_value]."""
    operations: tuple[str, ...] = ("add", "sub", "mul", "div")
    """Allowed operations among add, sub, mul, div (division is always exact)."""
    solution_styles: int = 1
    """How many styles each worked solution is drawn from, 1..8: 1 writes every solution in the one
    original template; more add other step orders (two like steps in a row summed or multiplied
    first, independent lines in any valid order, operands of + and * swapped) and wordings
    (openers such as "First," or "So", the equation before or after the sentence, "3 times 4 is
    12"). The draw depends only on the seed and the question, so questions and answers do not
    change with this knob."""

    def __post_init__(self) -> None:
        if isinstance(self.operations, str):
            raise ValueError(f"synthetic.operations must be a list of names, got the string {self.operations!r}")
        # YAML hands over lists; a tuple keeps the frozen config hashable.
        object.__setattr__(self, "operations", tuple(self.operations))
        checks = [
            (self.num_train >= 1, f"synthetic.num_train must be at least 1, got {self.num_train}"),
            (self.train_offset >= 0, f"synthetic.train_offset must be at least 0, got {self.train_offset}"),
            (self.num_val >= 1, f"synthetic.num_val must be at least 1, got {self.num_val}"),
            (self.num_test >= 1, f"synthetic.num_test must be at least 1, got {self.num_test}"),
            (1 <= self.min_steps <= MAX_STEPS,
             f"synthetic.min_steps must be between 1 and {MAX_STEPS}, got {self.min_steps}"),
            (self.min_steps <= self.max_steps <= MAX_STEPS,
             f"synthetic.max_steps must be between min_steps and {MAX_STEPS}, got {self.max_steps}"),
            (self.max_operand >= 2, f"synthetic.max_operand must be at least 2, got {self.max_operand}"),
            (self.max_value >= self.max_operand,
             f"synthetic.max_value must be at least max_operand ({self.max_operand}), got {self.max_value}"),
            (len(self.operations) > 0, "synthetic.operations must name at least one operation"),
            (set(self.operations) <= set(OPERATIONS),
             f"synthetic.operations must be among {sorted(OPERATIONS)}, got {list(self.operations)}"),
            (1 <= self.solution_styles <= len(SOLUTION_STYLES),
             f"synthetic.solution_styles must be between 1 and {len(SOLUTION_STYLES)}, got {self.solution_styles}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Step(NamedTuple):
    """One sentence of a story and its worked-solution line; ``{eq}`` becomes ``a OP b = c``."""

    op: str
    question: str | None  # None: add the previous holder's count, so the story needs no sentence
    solution: str
    to: str | None = None  # next state, if the quantity changes meaning (cookies -> boxes)
    shift: bool = False  # the quantity now belongs to the next person of the cast ({Q})
    ask: str | None = None  # replaces the state's question, so it can only be the last step


class _Work(NamedTuple):
    """One operation of a drawn problem, kept to write its solution in another style."""

    op: str  # add, sub, mul or div
    x: int
    y: int
    c: int  # x OP y
    sentence: str  # the solution sentence with "{eq}" left in it
    told: bool  # y is a number the story gives (else an earlier result), x the running quantity


def _rate(verb: str, unit: str, per: str, span: str, more: Step, less: Step, ask: str, *extra: Step):
    """A rate (unit per period) that becomes a total once it runs for some periods."""
    base = verb[:-1]
    rate = (f"How many {unit} {per} does {{P}} {base} now?", (
        Step("add", f"Later {{he}} {verb} {{b}} more {unit} {per}.", f"{{P}} {verb} {{eq}} {unit} {per} then."),
        Step("sub", f"Later {{he}} {verb} {{b}} fewer {unit} {per}.", f"{{P}} {verb} {{eq}} {unit} {per} then."),
        Step("mul", f"{{He}} keeps this up for {{b}} {span}.", f"{{P}} {verb} {{eq}} {unit}.", f"{base}_total"),
    ))
    return {f"{base}_rate": rate, f"{base}_total": (ask, (more, less, *extra))}


# state -> (question asked when a story ends there, steps that can follow)
STATES: dict[str, tuple[str, tuple[Step, ...]]] = {
    "own": ("How many {obj} does {P} have now?", (
        Step("add", "{He} finds {b} more {obj}.", "{P} has {eq} {obj} now."),
        Step("add", "{F} gives {him} {b} {obj}.", "{P} has {eq} {obj} after the gift."),
        Step("sub", "{He} gives {b} {obj} to {F}.", "{P} has {eq} {obj} left."),
        Step("sub", "{He} loses {b} of {his} {obj}.", "{P} has {eq} {obj} after losing some."),
        Step("mul", "{He} ends up with {b} times as many {obj} as before.", "{P} has {eq} {obj} now."),
        Step("div", "{He} splits {his} {obj} into {b} equal piles and keeps one pile.", "{P} keeps {eq} {obj}."),
    )),
    "bag": ("How many {obj} are in the bag now?", (
        Step("add", "{F} puts {b} more {obj} into the bag.", "The bag has {eq} {obj} now."),
        Step("sub", "{He} takes {b} {obj} out of the bag.", "The bag has {eq} {obj} left."),
        Step("mul", "{He} has {b} bags just like it.", "{P} has {eq} {obj} in all the bags.", "own"),
        Step("div", "{He} shares the {obj} in the bag equally among {b} friends.",
             "Each friend gets {eq} {obj}.", "each"),
    )),
    "each": ("How many {obj} does each friend get?", (
        Step("add", "One of the friends, {Q}, already had {b} {obj}.", "{Q} has {eq} {obj} now.", "own", True),
        Step("sub", "One of the friends, {Q}, loses {b} of them.", "{Q} has {eq} {obj} left.", "own", True),
        Step("mul", "One of the friends, {Q}, trades them for {b} times as many.",
             "{Q} has {eq} {obj} after the trade.", "own", True),
    )),
    "wallet": ("How many dollars does {P} have now?", (
        Step("add", "{He} earns {b} dollars for {chore}.", "{P} has {eq} dollars now."),
        Step("add", "{His} grandmother gives {him} {b} dollars.", "{P} has {eq} dollars after the gift."),
        Step("sub", "{He} buys {item} for {b} dollars.", "{P} has {eq} dollars left."),
        Step("mul", "{He} saves until {he} has {b} times as much money.", "{P} has {eq} dollars after saving."),
        Step("div", "{He} spends all of it on {obj} at {b} dollars per {one}.", "{P} buys {eq} {obj}.", "own"),
    )),
    "cost": ("How many dollars does {P} pay in total?", (
        Step("add", "{He} also buys {item} for {b} dollars.", "{P} pays {eq} dollars so far."),
        Step("sub", "{He} uses a coupon for {b} dollars off.", "{P} pays {eq} dollars after the coupon."),
        Step("mul", "{He} decides to buy {b} of everything instead.", "{P} pays {eq} dollars."),
        Step("div", "{He} splits the bill equally among {b} people.", "Each person pays {eq} dollars.", "share"),
    )),
    "share": ("How many dollars does each person pay?", (
        Step("add", "One of them, {Q}, also orders a drink for {b} dollars.", "{Q} pays {eq} dollars.",
             "cost", True),
        Step("sub", "One of them, {Q}, has a coupon for {b} dollars off.", "{Q} pays {eq} dollars.", "cost", True),
    )),
    "batch": ("How many {obj} does {P} have now?", (
        Step("add", "{He} bakes {b} more {obj}.", "{P} has {eq} {obj} now."),
        Step("sub", "{His} family eats {b} of the {obj}.", "{P} has {eq} {obj} left."),
        Step("mul", "{He} bakes {b} trays like that in total.", "{P} bakes {eq} {obj} in total."),
        Step("div", "{He} packs the {obj} into boxes of {b}.", "{P} fills {eq} boxes.", "boxes"),
    )),
    "boxes": ("How many boxes of {obj} are there now?", (
        Step("add", "{F} brings {b} more boxes.", "There are {eq} boxes now."),
        Step("sub", "{He} gives {b} boxes to {F}.", "There are {eq} boxes left."),
        Step("mul", "{He} sells each box for {b} dollars.", "{P} earns {eq} dollars.", "sales"),
    )),
    "sales": ("How many dollars does {P} end up with?", (
        Step("add", "A customer adds a tip of {b} dollars.", "{P} has {eq} dollars now."),
        Step("sub", "{He} pays {b} dollars for the boxes.", "{P} has {eq} dollars left."),
        Step("div", "{His} team of {b} bakers shares the money equally.", "Each baker gets {eq} dollars.",
             "baker"),
    )),
    "baker": ("How many dollars does each baker get?", ()),
    "holder": ("How many {obj} does {P} have?", (
        Step("add", "{Q} has {b} more {obj} than {P}.", "{Q} has {eq} {obj}.", shift=True),
        Step("sub", "{Q} has {b} fewer {obj} than {P}.", "{Q} has {eq} {obj}.", shift=True),
        Step("mul", "{Q} has {b} times as many {obj} as {P}.", "{Q} has {eq} {obj}.", shift=True),
        Step("div", "{Q} has {frac} as many {obj} as {P}.", "{Q} has {eq} {obj}.", shift=True),
        Step("add", None, "{R} and {P} have {eq} {obj} together.",
             ask="How many {obj} do {R} and {P} have together?"),
    )),
    **_rate("reads", "pages", "a day", "days",
            Step("add", "On the weekend {he} reads {b} more pages.", "{P} reads {eq} pages in total."),
            Step("sub", "{He} skips {b} of those pages.", "{P} reads {eq} pages."),
            "How many pages does {P} read in total?",
            Step("div", "The book has chapters of {b} pages each.", "{P} reads {eq} chapters.",
                 ask="How many chapters does {P} read?")),
    **_rate("drives", "km", "per hour", "hours",
            Step("add", "Then {he} drives {b} more km to the lake.", "{P} drives {eq} km in total."),
            Step("sub", "A shortcut saves {him} {b} km.", "{P} drives {eq} km."),
            "How many km does {P} drive in total?"),
    **_rate("pumps", "liters", "per minute", "minutes",
            Step("add", "Then {he} adds {b} more liters with a bucket.", "The pool gets {eq} liters in total."),
            Step("sub", "{b} liters splash out of the pool.", "The pool keeps {eq} liters."),
            "How many liters of water are in the pool?"),
    **_rate("earns", "dollars", "per hour", "hours",
            Step("add", "{He} also gets a bonus of {b} dollars.", "{P} has {eq} dollars in total."),
            Step("sub", "{He} spends {b} dollars on lunch.", "{P} has {eq} dollars left."),
            "How many dollars does {P} have at the end of the day?"),
}

_COLLECTIBLES = (("sticker", "stickers"), ("marble", "marbles"), ("shell", "shells"), ("stamp", "stamps"),
                 ("card", "cards"), ("coin", "coins"), ("button", "buttons"), ("bead", "beads"),
                 ("pebble", "pebbles"), ("feather", "feathers"), ("badge", "badges"), ("toy car", "toy cars"),
                 ("crayon", "crayons"), ("pencil", "pencils"), ("balloon", "balloons"))
_BAKED = (("cookie", "cookies"), ("muffin", "muffins"), ("cupcake", "cupcakes"), ("brownie", "brownies"),
          ("bagel", "bagels"), ("pie", "pies"), ("tart", "tarts"), ("roll", "rolls"))
_FRUITS = (("apple", "apples"), ("orange", "oranges"), ("pear", "pears"), ("peach", "peaches"),
           ("banana", "bananas"), ("lemon", "lemons"), ("plum", "plums"))
_ITEMS = ("a book", "a toy", "a hat", "a scarf", "an umbrella", "a lamp", "a ball", "a kite", "a puzzle", "a mug")
_CHORES = ("washing the car", "mowing the lawn", "walking the dog", "cleaning the garage", "watering the plants")

# name -> (first sentence, starting state, objects as (singular, plural))
SCENARIOS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    # Each first sentence has its own verb after the name, so the scenario is visible in the text.
    "collecting": ("{P} collects {obj} and has {a} of them.", "own", _COLLECTIBLES),
    "sharing": ("{P} has a bag of {a} {obj}.", "bag", _COLLECTIBLES + _FRUITS),
    "pocket_money": ("{P} keeps {a} dollars in {his} wallet.", "wallet", _FRUITS),
    "shopping": ("{P} buys {item} for {a} dollars.", "cost", ()),
    "baking": ("{P} bakes a tray of {a} {obj}.", "batch", _BAKED),
    "comparison": ("{P} owns {a} {obj}.", "holder", _COLLECTIBLES),
    "reading": ("{P} reads {a} pages a day.", "read_rate", ()),
    "driving": ("{P} drives at {a} km per hour.", "drive_rate", ()),
    "pumping": ("{P} pumps water into a pool at {a} liters per minute.", "pump_rate", ()),
    "earning": ("{P} earns {a} dollars per hour.", "earn_rate", ()),
}
_SCENARIO_LIST = tuple(SCENARIOS.values())

_FEMALE = ("Anna", "Maria", "Sofia", "Emma", "Lily", "Grace", "Chloe", "Mia", "Zoe", "Nora",
           "Ella", "Ruby", "Hannah", "Leah", "Julia")
_MALE = ("Tom", "Ben", "Sam", "Jack", "Leo", "Max", "Omar", "Noah", "Liam", "Ethan",
         "Lucas", "Ryan", "Owen", "Adam", "Hugo")
NAMES = _FEMALE + _MALE
_PRONOUNS = {
    **{n: {"he": "she", "He": "She", "his": "her", "His": "Her", "him": "her"} for n in _FEMALE},
    **{n: {"he": "he", "He": "He", "his": "his", "His": "His", "him": "him"} for n in _MALE},
}


def _below(rng: random.Random, n: int) -> int:
    # random() is several times cheaper than randrange(), and a problem needs about ten draws.
    return int(rng.random() * n)


def _operand(rng: random.Random, op: str, a: int, config: SyntheticConfig, fraction: bool) -> int | None:
    """A new number for ``a OP b`` that keeps the result a whole number in [1, max_value], or None."""
    top = config.max_operand
    if op == "div":
        divisors = [d for d in range(2, min(top, 4 if fraction else a, a) + 1) if a % d == 0]
        return divisors[_below(rng, len(divisors))] if divisors else None
    # Results stay >= 1: no story ends with "0 cookies left", and a later division still makes sense.
    if op == "add":
        low, high = 1, min(top, config.max_value - a)
    elif op == "sub":
        low, high = 1, min(top, a - 1)
    else:
        low, high = 2, min(top, config.max_value // a)
    return low + _below(rng, high - low + 1) if low <= high else None


@lru_cache(maxsize=None)
def _options(state: str, operations: tuple[str, ...], last: bool) -> tuple[Step, ...]:
    return tuple(s for s in STATES[state][1] if s.op in operations and (s.ask is None or last))


_Problem = tuple[str, str, int, list[_Work]]  # question, worked solution, answer, its operations


def _attempt(rng: random.Random, config: SyntheticConfig, num_steps: int) -> _Problem | None:
    """Question, worked solution and answer of one random walk through the states, and its
    operations when another style may be drawn; None at a dead end."""
    intro, state, pool = _SCENARIO_LIST[_below(rng, len(_SCENARIO_LIST))]
    one, many = pool[_below(rng, len(pool))] if pool else ("", "")
    cast: list[str] = []  # holders in story order, then a bystander friend
    while len(cast) < num_steps + 2:  # rng.sample() alone took a fifth of the run time
        name = NAMES[_below(rng, len(NAMES))]
        if name not in cast:
            cast.append(name)
    holder, previous, shifted, ask = 0, 0, False, None
    a = 2 + _below(rng, config.max_operand - 1)
    context = {"obj": many, "one": one, "F": cast[-1], "a": a, "item": _ITEMS[_below(rng, len(_ITEMS))]}

    def meet(index: int) -> None:
        context.update(_PRONOUNS[cast[index]], P=cast[index], Q=cast[index + 1], R=cast[index - 1])

    meet(0)
    story, lines, work = [intro.format_map(context)], [], []
    keep_work = config.solution_styles > 1
    for index in range(num_steps):
        options = _options(state, config.operations, index == num_steps - 1)
        start = _below(rng, len(options)) if options else 0
        for offset in range(len(options)):
            step = options[(start + offset) % len(options)]
            if step.question is None:
                b = previous if shifted and a + previous <= config.max_value else None
            else:
                b = _operand(rng, step.op, a, config, "{frac}" in step.question)
            if b is not None:
                break
        else:
            return None
        c = a + b if step.op == "add" else a - b if step.op == "sub" else a * b if step.op == "mul" else a // b
        # A combined total names the earlier holder first, so their count comes first too.
        x, y = (b, a) if step.question is None else (a, b)
        context["eq"] = f"{x} {OPERATIONS[step.op]} {y} = {c}"
        context["b"] = b
        if step.question is not None:
            if "{item}" in step.question:
                context["item"] = _ITEMS[_below(rng, len(_ITEMS))]
            if "{chore}" in step.question:
                context["chore"] = _CHORES[_below(rng, len(_CHORES))]
            if "{frac}" in step.question:
                context["frac"] = _FRACTIONS[b]
            story.append(step.question.format_map(context))
        lines.append(step.solution.format_map(context))
        if keep_work:
            work.append(_Work(step.op, x, y, c, lines[-1].replace(context["eq"], "{eq}", 1), step.question is not None))
        previous, shifted, ask = a, step.shift, step.ask
        if step.shift:
            holder += 1
            meet(holder)
        state, a = step.to or state, c
    story.append((ask or STATES[state][0]).format_map(context))
    return " ".join(story), "\n".join(lines), a, work


def _draw(rng: random.Random, config: SyntheticConfig, num_steps: int) -> _Problem:
    if not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"a synthetic problem must have between 1 and {MAX_STEPS} steps, got {num_steps}")
    for _ in range(_ATTEMPTS):
        problem = _attempt(rng, config, num_steps)
        if problem is not None:
            return problem
    raise ValueError(
        f"synthetic knobs cannot make a {num_steps}-step problem from operations {list(config.operations)} "
        f"with max_operand={config.max_operand} and max_value={config.max_value}"
    )


def generate_problem(rng: random.Random, config: SyntheticConfig, num_steps: int) -> Record:
    """One problem with exactly ``num_steps`` operations; ``uid`` is left empty for the caller."""
    question, solution, answer, work = _draw(rng, config, num_steps)
    solution = _styled(config, question, solution, work)
    return Record(uid="", question=question, answer=float(answer), chain_of_thought=solution)


_NAME_SET = frozenset(NAMES)


def _lower(text: str) -> str:
    """``text`` to follow other words: its first letter lowered unless it starts with a name."""
    return text if text.split(" ", 1)[0] in _NAME_SET else text[:1].lower() + text[1:]


def write_solution(work: list[_Work], style: SolutionStyle, rng: random.Random) -> str:
    """The worked solution of a problem's operations in ``style``; ``rng`` draws the step order,
    operand order and openers the style leaves open. Every line is still one equation whose
    operands are story numbers or results of earlier lines, and the last line gives the answer."""
    # Lines as (symbol, x, y, result, sentence, lines they need); each needs the one before,
    # except that two like steps in a row may become an independent line and a line using it.
    nodes: list[tuple[str, int, int, int, str, tuple[int, ...]]] = []
    index = 0
    while index < len(work):
        step = work[index]
        after = work[index + 1] if index + 1 < len(work) else None
        before = (len(nodes) - 1,) if nodes else ()
        # Not before a step that adds an earlier result (the holders' total): that result is
        # the first step's, which grouping would leave out.
        if (style.grouped and after is not None and after.op == step.op and step.told and after.told
                and (index + 2 >= len(work) or work[index + 2].told)):
            symbol, sentence = _GROUPED[step.op]
            joined = step.y + after.y if symbol == "+" else step.y * after.y
            nodes.append((symbol, step.y, after.y, joined, sentence, ()))
            nodes.append((OPERATIONS[step.op], step.x, joined, after.c, after.sentence, before + (len(nodes) - 1,)))
            index += 2
        else:
            nodes.append((OPERATIONS[step.op], step.x, step.y, step.c, step.sentence, before))
            index += 1
    orders = [order for order in itertools.permutations(range(len(nodes)))
              if all(order.index(need) < place for place, k in enumerate(order) for need in nodes[k][5])]
    order = orders[_below(rng, len(orders))]
    lines = []
    for place, k in enumerate(order):
        symbol, x, y, c, sentence, _ = nodes[k]
        if style.swap and symbol in "+*" and _below(rng, 2):
            x, y = y, x
        eq = f"{x} {_WORDS[symbol]} {y} is {c}" if style.words else f"{x} {symbol} {y} = {c}"
        if style.form == "inline":
            text = sentence.replace("{eq}", eq)
        else:
            plain = sentence.replace("{eq}", str(c))
            if style.form == "before":
                text = eq + style.connector + (plain if style.connector.endswith(". ") else _lower(plain))
            else:
                text = plain[:-1] + style.connector + eq + "."
        if len(order) == 1:
            opener = style.alone
        elif place == 0:
            opener = style.first
        else:
            opener = style.later[_below(rng, len(style.later))]
        lines.append(opener + _lower(text) if opener else text)
    return "\n".join(lines)


def _styled(config: SyntheticConfig, question: str, solution: str, work: list[_Work]) -> str:
    """The worked solution in a style drawn from the seed and the question alone."""
    if config.solution_styles == 1:
        return solution
    digest = hashlib.sha1(f"{config.seed}\n{question}".encode("utf-8")).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    style = _below(rng, config.solution_styles)
    return solution if style == 0 else write_solution(work, SOLUTION_STYLES[style], rng)


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by its text alone (10% test, 10% val, 80% train)."""
    bucket = int.from_bytes(hashlib.sha1(question.encode("utf-8")).digest()[:4], "big") % 100
    return "test" if bucket < 10 else "val" if bucket < 20 else "train"


def generate_splits(config: SyntheticConfig) -> dict[str, list[Record]]:
    """Train, val and test problems, disjoint by question text.

    One stream of problems is hashed into splits and problems for a full split are dropped,
    so the test and val problems are the same whatever ``num_train`` is.
    """
    wanted = {"train": config.train_offset + config.num_train, "val": config.num_val, "test": config.num_test}
    splits: dict[str, list[Record]] = {name: [] for name in wanted}
    rng = random.Random(config.seed)
    seen: set[str] = set()
    missing = sum(wanted.values())
    for _ in range(DRAWS_PER_PROBLEM * missing):
        if missing == 0:
            break
        num_steps = config.min_steps + _below(rng, config.max_steps - config.min_steps + 1)
        question, solution, answer, work = _draw(rng, config, num_steps)
        if question in seen:
            continue
        seen.add(question)
        name = split_of(question)
        split = splits[name]
        if len(split) < wanted[name]:
            uid = f"synthetic-{config.seed}-{name}-{len(split)}"
            solution = _styled(config, question, solution, work)
            split.append(Record(uid=uid, question=question, answer=float(answer), chain_of_thought=solution))
            missing -= 1
    if missing:
        found = ", ".join(f"{len(split)}/{wanted[name]} {name}" for name, split in splits.items())
        raise ValueError(
            f"synthetic knobs yield too few distinct problems ({found}); "
            "allow more steps, operations or larger numbers"
        )
    splits["train"] = splits["train"][config.train_offset :]
    return splits
