"""Seeded grade-school word problems with exact answers and step-by-step reference solutions.

Sixteen templates (shopping with change, speed and time, equal sharing, discounts, ages,
recipe scaling, savings, area and perimeter, unit conversion, working together, multi-item
totals, transfers, fuel cost, wages, percentages of a group, buses), each with several
phrasings, names and objects, and 2-5 solution steps.  A step is one line of the reference
solution: ``"<label>: <expression> = <value>"`` where the expression uses only numbers,
``+ - × ÷`` and parentheses, so the solution can be checked mechanically.  All arithmetic is
on ints (every division is exact by construction), every intermediate value is a
non-negative integer below one million, and the answer is the last step's value, repeated
as ``\\boxed{answer}`` at the end of the solution.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import gcd

from attnrhythm.errors import AttnRhythmError

MIN_STEPS, MAX_STEPS = 2, 5
_MAX_VALUE = 1_000_000

NAMES = (
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gabe", "Hana", "Isaac", "Jade", "Kofi", "Lena",
    "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wen", "Yusuf",
    "Zoe",
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One word problem: ``question``, exact ``answer``, ``steps`` count and a reference ``solution``."""

    id: str
    question: str
    answer: int | Fraction
    steps: int
    template: str
    solution: str

    @property
    def answer_text(self) -> str:
        """The answer written exactly: ``42`` or ``7/2``."""
        return format_exact(self.answer)


def format_exact(value: int | Fraction) -> str:
    if isinstance(value, Fraction) and value.denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    return str(int(value))


class _Retry(Exception):
    """The sampled numbers do not give a clean problem: sample again."""


class _Solution:
    """Collects the solution steps; every value must be a non-negative integer of sane size."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, label: str, expr: str, value: int) -> int:
        if not isinstance(value, int) or value < 0 or value > _MAX_VALUE:
            raise _Retry
        self.lines.append(f"{label}: {expr} = {value}")
        return value

    def div(self, label: str, a: int, b: int) -> int:
        if b <= 0 or a % b:
            raise _Retry
        return self.add(label, f"{a} ÷ {b}", a // b)

    def text(self) -> str:
        body = "\n".join(f"{i}. {line}" for i, line in enumerate(self.lines, 1))
        return f"{body}\nThe answer is \\boxed{{{self.lines[-1].rsplit(' = ', 1)[1]}}}."

    @property
    def answer(self) -> int:
        return int(self.lines[-1].rsplit(" = ", 1)[1])


_Template = Callable[[random.Random, int, _Solution], str]
_TEMPLATES: dict[str, tuple[_Template, tuple[int, ...]]] = {}


def _template(name: str, steps: tuple[int, ...]) -> Callable[[_Template], _Template]:
    def register(fn: _Template) -> _Template:
        _TEMPLATES[name] = (fn, steps)
        return fn

    return register


def template_names() -> list[str]:
    """Names of all templates, in registration order."""
    return list(_TEMPLATES)


def _names(rng: random.Random, k: int) -> list[str]:
    return rng.sample(NAMES, k)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _divisors(n: int, lo: int, hi: int) -> list[int]:
    return [d for d in range(lo, min(hi, n) + 1) if n % d == 0]


# --------------------------------------------------------------------------------------------
# Templates


_SHOP_ITEMS = (
    ("notebook", "notebooks", 2, 6), ("pen", "pens", 1, 3), ("marker", "markers", 2, 4),
    ("sandwich", "sandwiches", 4, 8), ("juice box", "juice boxes", 1, 3), ("comic book", "comic books", 3, 9),
    ("candle", "candles", 2, 7), ("mug", "mugs", 4, 9), ("pair of socks", "pairs of socks", 3, 6),
    ("potted plant", "potted plants", 5, 12), ("muffin", "muffins", 2, 4), ("toy car", "toy cars", 3, 8),
)  # fmt: skip
_SHOP_EXTRAS = (
    ("a reusable bag", 1, 3),
    ("a birthday card", 2, 5),
    ("a bunch of flowers", 6, 12),
    ("a map", 3, 8),
)
_STORES = ("corner shop", "school store", "market", "bookshop", "gift shop")


@_template("shopping_change", (2, 3, 4, 5))
def _shopping(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    n_items = {2: 1, 3: 1, 4: 2, 5: 3}[k]
    extra = k == 3 or (k == 4 and rng.random() < 0.5)
    parts: list[str] = []
    costs: list[int] = []
    for _singular, plural, lo, hi in rng.sample(_SHOP_ITEMS, n_items):
        qty, price = rng.randint(2, 6), rng.randint(lo, hi)
        parts.append(f"{qty} {plural} at ${price} each")
        costs.append(sol.add(f"Cost of the {plural}", f"{qty} × {price}", qty * price))
    if extra:
        what, lo, hi = rng.choice(_SHOP_EXTRAS)
        price = rng.randint(lo, hi)
        parts.append(f"{what} for ${price}")
        costs.append(price)
    total = costs[0]
    if len(costs) > 1:
        total = sol.add("Total cost", " + ".join(map(str, costs)), sum(costs))
    bill = next((b for b in (5, 10, 20, 50, 100, 200) if b > total), None)
    if bill is None:
        raise _Retry
    sol.add("Change", f"{bill} - {total}", bill - total)
    if rng.random() < 0.5:
        return (
            f"{name} buys {_join(parts)}. {name} pays with a ${bill} bill. "
            f"How much change, in dollars, does {name} get?"
        )
    return (
        f"At the {rng.choice(_STORES)}, {name} picks up {_join(parts)} and hands the cashier ${bill}. "
        f"How many dollars should {name} get back?"
    )


_VEHICLES = (("train", "km", 60, 120), ("car", "km", 40, 90), ("bus", "miles", 30, 60),
             ("cyclist", "km", 10, 25), ("boat", "miles", 10, 30))  # fmt: skip


@_template("speed_time", (2, 3, 4))
def _speed(rng: random.Random, k: int, sol: _Solution) -> str:
    vehicle, unit, lo, hi = rng.choice(_VEHICLES)
    the = f"the {vehicle}"
    if k == 2:
        s, t, rest = rng.randint(lo, hi), rng.randint(2, 5), rng.randint(1, 12) * 5
        d = sol.add("Distance so far", f"{s} × {t}", s * t)
        total = d + rest
        sol.add("Distance left", f"{total} - {d}", total - d)
        return (
            f"A {vehicle} is making a {total}-{unit[:-1] if unit == 'miles' else unit} journey. "
            "It travels at "
            f"{s} {unit} per hour for {t} hours. How many {unit} are left to travel?"
        )
    if k == 3 and rng.random() < 0.5:
        s, t, v, t2 = rng.randint(lo, hi), rng.randint(2, 4), rng.randint(lo, hi), rng.randint(1, 4)
        total = s * t + v * t2
        d = sol.add("Distance covered first", f"{s} × {t}", s * t)
        rest = sol.add("Distance remaining", f"{total} - {d}", total - d)
        sol.div("Hours for the rest", rest, v)
        return (
            f"A trip is {total} {unit} long. A {vehicle} covers the first part at {s} {unit} per hour "
            f"for {t} "
            f"hours, then goes the rest of the way at {v} {unit} per hour. "
            f"How many more hours does {the} need after the first part?"
        )
    s1, t1, s2, t2 = rng.randint(lo, hi), rng.randint(2, 5), rng.randint(lo, hi), rng.randint(2, 5)
    d1 = sol.add("First part", f"{s1} × {t1}", s1 * t1)
    d2 = sol.add("Second part", f"{s2} × {t2}", s2 * t2)
    total = sol.add("Total distance", f"{d1} + {d2}", d1 + d2)
    lead = (
        f"A {vehicle} travels at {s1} {unit} per hour for {t1} hours and then at {s2} {unit} per hour "
        f"for {t2} hours."
    )
    if k == 3:
        return f"{lead} How many {unit} does it travel altogether?"
    speeds = [v for v in _divisors(total, lo, hi) if total // v >= 2]
    if not speeds:
        raise _Retry
    v = rng.choice(speeds)
    sol.div("Hours to come back", total, v)
    return (
        f"{lead} It comes back the same way at {v} {unit} per hour. How many hours does the return trip take?"
    )


_SHARE_THINGS = ("candies", "cookies", "stickers", "marbles", "crayons", "beads", "trading cards")
_CONTAINERS = ("boxes", "bags", "packs", "jars")


@_template("equal_sharing", (2, 3, 4))
def _sharing(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    thing = rng.choice(_SHARE_THINGS)
    c1, c2 = rng.sample(_CONTAINERS, 2)
    a, b = rng.randint(2, 9), rng.randint(4, 24)
    if k == 4:
        c, d = rng.randint(2, 9), rng.randint(4, 24)
        t1 = sol.add(f"{thing.capitalize()} in the {c1}", f"{a} × {b}", a * b)
        t2 = sol.add(f"{thing.capitalize()} in the {c2}", f"{c} × {d}", c * d)
        total = sol.add(f"All {thing}", f"{t1} + {t2}", t1 + t2)
        friends = [f for f in _divisors(total, 2, 12) if total // f >= 2]
        if not friends:
            raise _Retry
        n = rng.choice(friends)
        sol.div("Each friend gets", total, n)
        return (
            f"{name} has {a} {c1} with {b} {thing} in each and {c} {c2} with {d} {thing} in each. "
            f"{name} shares all of the {thing} equally among {n} friends. "
            f"How many {thing} does each friend get?"
        )
    total = sol.add(f"Total {thing}", f"{a} × {b}", a * b)
    if k == 2:
        friends = [f for f in _divisors(total, 2, 12) if total // f >= 2]
        if not friends:
            raise _Retry
        n = rng.choice(friends)
        sol.div("Each friend gets", total, n)
        if rng.random() < 0.5:
            return (
                f"{name} has {a} {c1} of {thing} with {b} {thing} in each "
                f"{c1[:-2] if c1 == 'boxes' else c1[:-1]}. "
                f"{name} shares them equally among {n} friends. How many {thing} does each friend get?"
            )
        return (
            f"There are {b} {thing} in each of {a} {c1}. "
            f"If all of them are split evenly between {n} children, "
            f"how many {thing} does each child receive?"
        )
    n = rng.randint(2, 8)
    each_options = [e for e in range(1, total) if 2 <= total - n * e <= total // 2]
    if not each_options:
        raise _Retry
    each = rng.choice(each_options)
    keep = total - n * each
    rest = sol.add(f"{thing.capitalize()} left to share", f"{total} - {keep}", total - keep)
    sol.div("Each friend gets", rest, n)
    return (
        f"{name} buys {a} {c1} of {thing}, and each one holds {b} {thing}. {name} keeps {keep} {thing} and "
        f"shares the rest equally among {n} friends. How many {thing} does each friend get?"
    )


_SALE_ITEMS = (("jacket", "jackets"), ("pair of shoes", "pairs of shoes"), ("lamp", "lamps"),
               ("board game", "board games"), ("backpack", "backpacks"), ("bike helmet", "bike helmets"),
               ("watch", "watches"), ("teapot", "teapots"))  # fmt: skip
_PERCENTS = (10, 15, 20, 25, 30, 40, 50, 75)


def _percent_price(rng: random.Random, percent: int, lo: int, hi: int) -> int:
    """A price in [lo, hi] whose ``percent`` % is a whole number of dollars."""
    step = 100 // gcd(percent, 100)
    options = [p for p in range(lo, hi + 1) if p % step == 0]
    if not options:
        raise _Retry
    return rng.choice(options)


@_template("percent_discount", (2, 3, 4, 5))
def _discount(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    item, items = rng.choice(_SALE_ITEMS)
    d = rng.choice(_PERCENTS)
    price = _percent_price(rng, d, 12, 160)
    off = sol.add("Discount", f"{price} × {d} ÷ 100", price * d // 100)
    sale = sol.add("Sale price", f"{price} - {off}", price - off)
    opening = rng.choice((
        f"A {item} normally costs ${price}, and this week everything in the store is {d}% off.",
        f"The price tag on a {item} says ${price}. At the checkout {name} gets a {d}% discount.",
    ))  # fmt: skip
    if k == 2:
        return f"{opening} What is the price of the {item} after the discount, in dollars?"
    q = rng.randint(2, 4)
    cost = sol.add(f"Cost of {q} {items}", f"{sale} × {q}", sale * q)
    if k == 3:
        return f"{opening} How many dollars does {name} pay for {q} {items} at the sale price?"
    extra_text = ""
    if k == 5:
        fee = rng.randint(3, 9)
        cost = sol.add("Total with gift wrapping", f"{cost} + {fee}", cost + fee)
        extra_text = f" Gift wrapping costs ${fee} for the whole order."
    bill = next((b for b in (20, 50, 100, 200, 500) if b > cost), None)
    if bill is None:
        raise _Retry
    sol.add("Change", f"{bill} - {cost}", bill - cost)
    return (
        f"{opening} {name} buys {q} {items} at the sale price.{extra_text} {name} pays with ${bill}. "
        f"How much change, in dollars, does {name} receive?"
    )


@_template("ages", (2, 3, 4))
def _ages(rng: random.Random, k: int, sol: _Solution) -> str:
    a_name, b_name, c_name = _names(rng, 3)
    a, m = rng.randint(3, 14), rng.randint(2, 4)
    b = sol.add(f"{b_name}'s age", f"{a} × {m}", a * m)
    y = rng.randint(2, b - 2)
    c = sol.add(f"{c_name}'s age", f"{b} - {y}", b - y)
    facts = rng.choice((
        f"{a_name} is {a} years old. {b_name} is {m} times as old as {a_name}, "
        f"and {c_name} is {y} years younger than {b_name}.",
        f"{b_name}'s age is {m} times {a_name}'s age, and {a_name} is {a}. "
        f"{c_name} is {y} years younger than {b_name}.",
    ))  # fmt: skip
    if k == 2:
        return f"{facts} How old is {c_name}?"
    s = sol.add("Sum of the three ages", f"{a} + {b} + {c}", a + b + c)
    if k == 3:
        return f"{facts} What is the sum of the three ages?"
    z = rng.randint(2, 10)
    sol.add(f"Sum in {z} years", f"{s} + 3 × {z}", s + 3 * z)
    return f"{facts} What will the sum of their three ages be in {z} years?"


# dish -> (unit, ingredient) pairs that belong in it
_RECIPES = {
    "pancakes": (("cups", "flour"), ("cups", "milk"), ("tablespoons", "butter"), ("cups", "blueberries")),
    "vegetable soup": (
        ("cups", "water"),
        ("grams", "carrots"),
        ("cups", "chopped celery"),
        ("grams", "potatoes"),
    ),
    "fruit salad": (("cups", "grapes"), ("cups", "strawberries"), ("cups", "melon cubes")),
    "lemonade": (("cups", "lemon juice"), ("cups", "water"), ("cups", "sugar")),
    "banana bread": (("cups", "flour"), ("cups", "sugar"), ("tablespoons", "butter"), ("grams", "walnuts")),
    "oatmeal": (("cups", "oats"), ("cups", "milk"), ("tablespoons", "honey"), ("cups", "raisins")),
}


@_template("recipe_scaling", (2, 3, 4))
def _recipe(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    dish = rng.choice(list(_RECIPES))
    serves, times = rng.randint(2, 6), rng.randint(2, 5)
    target = serves * times
    if k == 4:
        (_, i1), (_, i2) = rng.sample([x for x in _RECIPES[dish] if x[0] == "cups"], 2)
        f, g = rng.randint(2, 5), rng.randint(2, 5)
        batches = sol.div("Number of batches", target, serves)
        x = sol.add(f"Cups of {i1}", f"{f} × {batches}", f * batches)
        y = sol.add(f"Cups of {i2}", f"{g} × {batches}", g * batches)
        sol.add("Cups in total", f"{x} + {y}", x + y)
        return (
            f"A recipe for {dish} that serves {serves} people uses {f} cups of {i1} and {g} cups of {i2}. "
            f"{name} wants to serve {target} people. "
            f"How many cups of {i1} and {i2} together does {name} need?"
        )
    unit, ingredient = rng.choice(_RECIPES[dish])
    amount = rng.randint(2, 9) * (50 if unit == "grams" else 1)
    batches = sol.div("Number of batches", target, serves)
    need = sol.add(f"{unit.capitalize()} of {ingredient} needed", f"{amount} × {batches}", amount * batches)
    base = f"A recipe for {dish} serves {serves} people and needs {amount} {unit} of {ingredient}."
    if k == 2:
        return rng.choice((
            f"{base} How many {unit} of {ingredient} are needed to serve {target} people?",
            f"{base} {name} is cooking for {target} people. "
            f"How many {unit} of {ingredient} should {name} use?",
        ))  # fmt: skip
    have = rng.randint(2, need - 1)
    sol.add(f"{unit.capitalize()} still to buy", f"{need} - {have}", need - have)
    return (
        f"{base} {name} wants to serve {target} people but only has {have} {unit} of {ingredient}. "
        f"How many more {unit} of {ingredient} does {name} need?"
    )


_GOALS = ("bike", "guitar", "telescope", "skateboard", "video game console", "tent")
_JOBS = ("walking dogs", "mowing lawns", "babysitting", "washing cars")


@_template("savings", (2, 3, 4, 5))
def _savings(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    goal_item = rng.choice(_GOALS)
    weekly, weeks = rng.randint(4, 30), rng.randint(3, 15)
    saved, gift = rng.randint(5, 80), rng.randint(5, 50)
    spend = rng.randint(2, 15)
    lines: list[str] = []
    if k == 5:
        rate = rng.randint(5, 15)
        hours = rng.randint(2, 8)
        spend = rng.randint(1, rate * hours - 1)
        earned = sol.add("Money earned each week", f"{hours} × {rate}", hours * rate)
        weekly = sol.add("Money saved each week", f"{earned} - {spend}", earned - spend)
        lines.append(
            f"{name} works {hours} hours a week {rng.choice(_JOBS)} for ${rate} an hour and spends ${spend} "
            "of it each week; the rest is saved."
        )
    elif k >= 3:
        earned = weekly + spend
        weekly = sol.add("Money saved each week", f"{earned} - {spend}", earned - spend)
        lines.append(
            f"{name} earns ${earned} a week {rng.choice(_JOBS)} and spends ${spend} of it each week."
        )
    else:
        lines.append(f"{name} saves ${weekly} every week.")
    have = saved
    if k >= 4:
        have = sol.add("Money already saved", f"{saved} + {gift}", saved + gift)
        lines.append(f"{name} already has ${saved} saved and gets ${gift} as a birthday present.")
    else:
        lines.append(f"{name} has already saved ${saved}.")
    goal = have + weekly * weeks
    need = sol.add("Money still needed", f"{goal} - {have}", goal - have)
    sol.div("Weeks needed", need, weekly)
    opening = f"{name} wants to buy a {goal_item} that costs ${goal}."
    return f"{opening} {' '.join(lines)} How many weeks will it take {name} to have exactly enough money?"


_PLOTS = ("garden", "yard", "playground", "courtyard", "field")


@_template("area_perimeter", (2, 3, 4, 5))
def _area(rng: random.Random, k: int, sol: _Solution) -> str:
    plot = rng.choice(_PLOTS)
    length, width = rng.randint(6, 30), rng.randint(4, 20)
    base = f"A rectangular {plot} is {length} meters long and {width} meters wide."
    if k == 2:
        price = rng.randint(2, 12)
        if rng.random() < 0.5:
            p = sol.add("Perimeter", f"2 × ({length} + {width})", 2 * (length + width))
            sol.add("Cost of the fence", f"{p} × {price}", p * price)
            return f"{base} Fencing costs ${price} per meter. How much does it cost to fence it all around?"
        a = sol.add("Area", f"{length} × {width}", length * width)
        sol.add("Cost of the tiles", f"{a} × {price}", a * price)
        return f"{base} Tiles cost ${price} per square meter. How much does it cost to tile the whole {plot}?"
    side = rng.randint(2, min(length, width) - 1)
    feature = rng.choice(("square pond", "square patio", "square sandpit"))
    area = sol.add(f"Area of the {plot}", f"{length} × {width}", length * width)
    part = sol.add(f"Area of the {feature.split()[1]}", f"{side} × {side}", side * side)
    rest = sol.add("Area left for grass", f"{area} - {part}", area - part)
    with_feature = f"{base} A {feature} with sides of {side} meters is built in it, and the rest is grass."
    if k == 3:
        return f"{with_feature} How many square meters of grass are there?"
    if k == 4:
        price = rng.randint(2, 6)
        sol.add("Cost of the seed", f"{rest} × {price}", rest * price)
        return f"{with_feature} Grass seed costs ${price} per square meter. How much does the seed cost?"
    covers = _divisors(rest, 5, 50)
    if not covers:
        raise _Retry
    cover, price = rng.choice(covers), rng.randint(3, 15)
    bags = sol.div("Bags of seed", rest, cover)
    sol.add("Cost of the seed", f"{bags} × {price}", bags * price)
    return (
        f"{with_feature} One bag of grass seed covers {cover} square meters and costs ${price}. "
        "How much does it cost to buy just enough bags for the grass?"
    )


@_template("unit_conversion", (2, 3, 4))
def _units(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    kind = rng.choice(("rope", "juice") if k == 2 else ("rope", "movie") if k == 3 else ("movie",))
    if kind == "rope":
        feet, piece = rng.randint(2, 20), rng.choice((3, 4, 6, 8, 9, 12))
        inches = sol.add("Length in inches", f"{feet} × 12", feet * 12)
        extra = 0
        if k == 3:
            extra = rng.randint(1, 11)
            inches = sol.add("Total inches", f"{inches} + {extra}", inches + extra)
        sol.div("Number of pieces", inches, piece)
        length = f"{feet} feet {extra} inches" if extra else f"{feet} feet"
        return (
            f"A rope is {length} long. {name} cuts it into pieces that are each {piece} inches long. "
            f"How many pieces does {name} get? (1 foot = 12 inches)"
        )
    if kind == "juice":
        liters, glass = rng.randint(2, 12), rng.choice((100, 200, 250, 500))
        ml = sol.add("Milliliters of juice", f"{liters} × 1000", liters * 1000)
        sol.div("Glasses filled", ml, glass)
        return (
            f"A container holds {liters} liters of juice. How many {glass}-milliliter glasses can be filled "
            "from it? (1 liter = 1000 milliliters)"
        )
    hours, minutes = rng.randint(2, 5), rng.randint(5, 55)
    watched = rng.randint(10, hours * 60)
    total = sol.add("Hours in minutes", f"{hours} × 60", hours * 60)
    total = sol.add("Total minutes", f"{total} + {minutes}", total + minutes)
    left = sol.add("Minutes left", f"{total} - {watched}", total - watched)
    base = (
        f"A movie marathon lasts {hours} hours and {minutes} minutes. "
        f"{name} has already watched {watched} minutes."
    )
    if k == 3:
        return f"{base} How many minutes of the marathon are left?"
    sessions = _divisors(left, 2, 6)
    if not sessions:
        raise _Retry
    n = rng.choice(sessions)
    sol.div("Minutes per session", left, n)
    return f"{base} {name} will watch the rest in {n} equal sessions. How many minutes long is each session?"


_CRAFTS = ("birdhouses", "cupcakes", "paper cranes", "bracelets", "clay pots", "greeting cards")


@_template("work_together", (2, 3, 4))
def _work(rng: random.Random, k: int, sol: _Solution) -> str:
    a_name, b_name = _names(rng, 2)
    thing = rng.choice(_CRAFTS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    rates = f"{a_name} makes {a} {thing} an hour and {b_name} makes {b} {thing} an hour."
    if k == 2 and rng.random() < 0.5:
        hours = rng.randint(2, 8)
        rate = sol.add("Made together per hour", f"{a} + {b}", a + b)
        sol.add("Made in total", f"{rate} × {hours}", rate * hours)
        return f"{rates} How many {thing} do they make together in {hours} hours?"
    hours = rng.randint(2, 9)
    if k == 4:
        first = rng.randint(2, 4)
        made = sol.add(f"Made by {a_name} alone", f"{a} × {first}", a * first)
        goal = made + (a + b) * hours
        left = sol.add("Still to make", f"{goal} - {made}", goal - made)
        rate = sol.add("Made together per hour", f"{a} + {b}", a + b)
        sol.div("Hours working together", left, rate)
        return (
            f"{rates} They need {goal} {thing}. {a_name} works alone for {first} hours, then {b_name} joins. "
            "How many hours do they work together to finish?"
        )
    if k == 3:
        done = rng.randint(5, 40)
        goal = done + (a + b) * hours
        left = sol.add("Still to make", f"{goal} - {done}", goal - done)
        rate = sol.add("Made together per hour", f"{a} + {b}", a + b)
        sol.div("Hours needed", left, rate)
        return (
            f"{rates} They need {goal} {thing} for a fair and have already made {done}. "
            "Working together, how many more hours will they need?"
        )
    goal = (a + b) * hours
    rate = sol.add("Made together per hour", f"{a} + {b}", a + b)
    sol.div("Hours needed", goal, rate)
    return f"{rates} Working together, how many hours do they need to make {goal} {thing}?"


_STOCK = {
    "fruit": (("crates", "apples"), ("bags", "oranges"), ("boxes", "pears"), ("baskets", "plums"),
              ("boxes", "peaches")),
    "supplies": (("packs", "pencils"), ("boxes", "crayons"), ("bags", "erasers"), ("packs", "glue sticks"),
                 ("boxes", "paper clips")),
}  # fmt: skip


@_template("multi_item_totals", (3, 4, 5))
def _multi(rng: random.Random, k: int, sol: _Solution) -> str:
    theme = rng.choice(list(_STOCK))
    sold = k == 5 or (k == 4 and rng.random() < 0.5)
    n_kinds = k - 1 - int(sold)  # products, one sum, then the optional subtraction
    parts, counts = [], []
    for container, thing in rng.sample(_STOCK[theme], n_kinds):
        q, per = rng.randint(2, 12), rng.randint(5, 30)
        parts.append(f"{q} {container} of {thing} with {per} {thing} in each")
        counts.append(sol.add(f"Number of {thing}", f"{q} × {per}", q * per))
    total = sol.add("Total", " + ".join(map(str, counts)), sum(counts))
    place, unit = ("A grocery store", "pieces of fruit") if theme == "fruit" else ("A school", "items")
    if not sold:
        return f"{place} receives {_join(parts)}. How many {unit} does it receive in all?"
    used = rng.randint(1, total - 1)
    sol.add("Left over", f"{total} - {used}", total - used)
    verb = "sells" if theme == "fruit" else "hands out"
    return f"{place} receives {_join(parts)}. It {verb} {used} of them. How many {unit} are left?"


_COLLECTIBLES = ("marbles", "stickers", "stamps", "seashells", "baseball cards", "postcards")


@_template("transfers", (2, 3, 4, 5))
def _transfers(rng: random.Random, k: int, sol: _Solution) -> str:
    a_name, b_name, c_name = _names(rng, 3)
    thing = rng.choice(_COLLECTIBLES)
    x = rng.randint(20, 90)
    g = rng.randint(2, x - 5)
    if k == 2:
        bought = rng.randint(2, 30)
        left = sol.add(f"{a_name} after giving", f"{x} - {g}", x - g)
        sol.add(f"{a_name} now", f"{left} + {bought}", left + bought)
        return (
            f"{a_name} had {x} {thing}. {a_name} gave {g} of them to {b_name} and then bought {bought} more. "
            f"How many {thing} does {a_name} have now?"
        )
    y = rng.randint(5, 60)
    a2 = sol.add(f"{a_name} after giving", f"{x} - {g}", x - g)
    b2 = sol.add(f"{b_name} after receiving", f"{y} + {g}", y + g)
    start = f"{a_name} has {x} {thing} and {b_name} has {y}. {a_name} gives {g} {thing} to {b_name}."
    if k == 3:
        if b2 <= a2:
            raise _Retry
        sol.add("Difference", f"{b2} - {a2}", b2 - a2)
        return f"{start} How many more {thing} does {b_name} have than {a_name} now?"
    h = rng.randint(2, b2 - 1)
    b3 = sol.add(f"{b_name} after giving", f"{b2} - {h}", b2 - h)
    then = f" Then {b_name} gives {h} {thing} to {c_name}."
    if k == 4:
        if b3 <= a2:
            raise _Retry
        sol.add("Difference", f"{b3} - {a2}", b3 - a2)
        return f"{start}{then} How many more {thing} does {b_name} have than {a_name} now?"
    z = rng.randint(2, 40)
    c2 = sol.add(f"{c_name} after receiving", f"{z} + {h}", z + h)
    if b3 + c2 <= a2:
        raise _Retry
    sol.add("Difference", f"{b3} + {c2} - {a2}", b3 + c2 - a2)
    return (
        f"{start}{then} {c_name} started with {z} {thing}. "
        f"How many more {thing} do {b_name} and {c_name} have together than {a_name} has now?"
    )


@_template("fuel_cost", (2, 3, 4))
def _fuel(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    vehicle = rng.choice(("car", "van", "truck", "camper"))
    per = rng.choice((5, 8, 10, 12, 15, 20))
    price = rng.randint(1, 3)
    liters = rng.randint(3, 30)
    if k == 2:
        distance = per * liters
        used = sol.div("Liters of fuel", distance, per)
        sol.add("Fuel cost", f"{used} × {price}", used * price)
        return (
            f"{name}'s {vehicle} uses 1 liter of fuel for every {per} km. Fuel costs ${price} per liter. "
            f"How much does the fuel for a {distance} km drive cost?"
        )
    one_way = per * liters // 2 if (per * liters) % 2 == 0 else None
    if one_way is None:
        raise _Retry
    place = rng.choice(("the beach", "the mountains", "a lake", "their grandparents' house"))
    distance = sol.add("Round-trip distance", f"{one_way} × 2", one_way * 2)
    used = sol.div("Liters of fuel", distance, per)
    cost = sol.add("Fuel cost", f"{used} × {price}", used * price)
    base = (
        f"{name} drives a {vehicle} to {place}, {one_way} km away, and back again. "
        f"The {vehicle} uses 1 liter of "
        f"fuel for every {per} km, and fuel costs ${price} per liter."
    )
    if k == 3:
        return f"{base} How much does the fuel for the whole trip cost?"
    parking = rng.randint(3, 20)
    sol.add("Total cost", f"{cost} + {parking}", cost + parking)
    return f"{base} Parking there costs ${parking}. How much does the trip cost in total, fuel and parking?"


@_template("wages", (2, 3, 4, 5))
def _wages(rng: random.Random, k: int, sol: _Solution) -> str:
    (name,) = _names(rng, 1)
    job = rng.choice(("at a bakery", "as a lifeguard", "at a bookshop", "as a tutor", "at a cafe"))
    rate, hours, days = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 6)
    daily = sol.add("Pay per day", f"{rate} × {hours}", rate * hours)
    weekly = sol.add("Pay per week", f"{daily} × {days}", daily * days)
    base = f"{name} works {job}, earning ${rate} an hour for {hours} hours a day, {days} days a week."
    if k == 2:
        return f"{base} How much does {name} earn in a week?"
    if k == 5:
        extra_hours, extra_rate = rng.randint(2, 6), rate + rng.randint(2, 10)
        overtime = sol.add("Overtime pay", f"{extra_hours} × {extra_rate}", extra_hours * extra_rate)
        gross = sol.add("Total pay", f"{weekly} + {overtime}", weekly + overtime)
        fares = rng.randint(5, 30)
        sol.add("Money kept", f"{gross} - {fares}", gross - fares)
        return (
            f"{base} This week {name} also works {extra_hours} overtime hours paid at ${extra_rate} an hour, "
            f"and spends ${fares} on bus fares. How much of this week's pay does {name} keep?"
        )
    bonus = rng.randint(10, 60)
    total = sol.add("Pay with the bonus", f"{weekly} + {bonus}", weekly + bonus)
    if k == 3:
        return f"{base} This week {name} also gets a ${bonus} bonus. How much does {name} earn this week?"
    fares = rng.randint(5, 30)
    sol.add("Money kept", f"{total} - {fares}", total - fares)
    return (
        f"{base} This week {name} also gets a ${bonus} bonus but spends ${fares} on bus fares. "
        f"How much money does {name} keep this week?"
    )


# (who, where, fact, its negation as asked, a second group of the rest)
_GROUPS = (
    ("students", "at a school", "take the bus", "do not take the bus", "walk to school"),
    (
        "people",
        "at a concert",
        "bought their tickets online",
        "did not buy their tickets online",
        "came by train",
    ),
    ("members", "in a sports club", "play tennis", "do not play tennis", "swim"),
    ("trees", "in an orchard", "are apple trees", "are not apple trees", "are pear trees"),
)
_PARTS = ((2, "Half"), (3, "A third"), (4, "A quarter"), (5, "A fifth"))


@_template("percent_of_group", (2, 3))
def _percent_group(rng: random.Random, k: int, sol: _Solution) -> str:
    who, where, first, negated, second = rng.choice(_GROUPS)
    p = rng.choice(_PERCENTS)
    total = _percent_price(rng, p, 40, 900)
    part = sol.add(f"{who.capitalize()} who {first}", f"{total} × {p} ÷ 100", total * p // 100)
    rest = sol.add("The rest", f"{total} - {part}", total - part)
    base = f"There are {total} {who} {where}. {p}% of them {first}."
    if k == 2:
        return f"{base} How many of the {who} {negated}?"
    div, word = rng.choice(_PARTS)
    sol.div(f"{who.capitalize()} who {second}", rest, div)
    return f"{base} {word} of the rest {second}. How many {who} {second}?"


@_template("buses", (2, 3))
def _buses(rng: random.Random, k: int, sol: _Solution) -> str:
    vehicle, trip = rng.choice((("bus", "field trip"), ("van", "museum visit"), ("boat", "river tour")))
    plural = vehicle + ("es" if vehicle == "bus" else "s")
    seats, count = rng.choice((10, 12, 15, 20, 25, 30, 40)), rng.randint(2, 9)
    people = seats * count
    teachers = rng.randint(2, max(2, people // 10))
    students = people - teachers
    total = sol.add("People going", f"{students} + {teachers}", students + teachers)
    used = sol.div(f"{plural.capitalize()} needed", total, seats)
    base = (
        f"{students} students and {teachers} teachers are going on a {trip}. "
        f"Each {vehicle} holds {seats} people, "
        f"and every {vehicle} will be full."
    )
    if k == 2:
        return f"{base} How many {plural} are needed?"
    price = rng.randint(40, 200)
    sol.add("Cost", f"{used} × {price}", used * price)
    return f"{base} Renting one {vehicle} costs ${price}. How much does renting all the {plural} cost?"


# --------------------------------------------------------------------------------------------
# Generator


def _steps_range(steps: tuple[int, int] | None) -> tuple[int, int]:
    if steps is None:
        return MIN_STEPS, MAX_STEPS
    lo, hi = steps
    if not MIN_STEPS <= lo <= hi <= MAX_STEPS:
        raise AttnRhythmError(
            f"steps={steps} is out of range: pass (low, high) with {MIN_STEPS} <= low <= high <= {MAX_STEPS}"
        )
    return lo, hi


def generate_problems(n: int, seed: int = 0, *, steps: tuple[int, int] | None = None) -> list[Problem]:
    """``n`` distinct word problems, deterministic for ``seed``; ``steps`` limits the step count.

    Templates are drawn uniformly among those that can produce a step count in range, then the
    step count uniformly among that template's counts in range.
    """
    if n < 0:
        raise AttnRhythmError(f"n={n} is negative: ask for zero or more problems")
    lo, hi = _steps_range(steps)
    eligible = [(name, fn, [k for k in counts if lo <= k <= hi]) for name, (fn, counts) in _TEMPLATES.items()]
    eligible = [entry for entry in eligible if entry[2]]
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[Problem] = []
    failures = 0
    while len(problems) < n:
        name, fn, counts = rng.choice(eligible)
        k = rng.choice(counts)
        sol = _Solution()
        try:
            question = fn(rng, k, sol)
        except _Retry:
            question = None
        if question is None or question in seen:
            failures += 1
            if failures > 1000 + 100 * n:  # pragma: no cover - the templates have far more variety
                raise AttnRhythmError(f"could not generate {n} distinct problems: ask for fewer")
            continue
        if len(sol.lines) != k:  # pragma: no cover - a template bug
            raise RuntimeError(f"template {name} made {len(sol.lines)} steps instead of {k}")
        seen.add(question)
        problems.append(
            Problem(
                id=f"wp-{seed}-{len(problems):05d}",
                question=question,
                answer=sol.answer,
                steps=k,
                template=name,
                solution=sol.text(),
            )
        )
    return problems
