"""Built-in problems and the terminal rendering of ``attnrhythm demo``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnrhythm.method.config import ROLE_NAMES as ROLE_ORDER
from attnrhythm.views.report import record_correct


@dataclass(frozen=True)
class Problem:
    question: str
    answer: float


PROBLEMS: tuple[Problem, ...] = (
    Problem(
        "Tom has 3 boxes with 12 apples in each box. He gives away 10 apples. "
        "How many apples does he have left? Think step by step.",
        26,
    ),
    Problem(
        "A shop sells pencils at 4 dollars each. Maria buys 6 pencils and pays with a 50 dollar bill. "
        "How much change does she get? Think step by step.",
        26,
    ),
    Problem(
        "A train travels 60 miles per hour for 3 hours, then 40 miles per hour for 2 hours. "
        "How many miles does it travel in total? Think step by step.",
        260,
    ),
    Problem(
        "Lena reads 15 pages a day. Her book has 120 pages. After 5 days, how many pages "
        "are left to read? Think step by step.",
        45,
    ),
    Problem(
        "A farmer has 8 cows and twice as many sheep. Each animal eats 2 kilograms of hay a day. "
        "How many kilograms of hay do they eat in a day? Think step by step.",
        48,
    ),
    Problem(
        "Sam saves 7 dollars every week. How many weeks does he need to save 91 dollars? Think step by step.",
        13,
    ),
)

#: role letter, name, record field, style when it marks a token on its own (docs/method.md section 4)
ROLES: tuple[tuple[str, str, str], ...] = (
    ("P", "preplan", "preplan"),
    ("A", "anchor", "anchor"),
    ("D", "dominated anchor", "dominated"),
    ("I", "intro token", "intro"),
)
# Anchors, dominated anchors and intro tokens get a background (a dominated anchor is an anchor,
# so its colour wins); preplan tokens are bold and underlined, so both kinds show on one token.
BACKGROUND = {"D": "black on yellow", "A": "black on magenta", "I": "black on green"}
PREPLAN = "bold underline"
PREPLAN_ALONE = "bold underline cyan"
ROLE_STYLE = {"P": PREPLAN_ALONE, **BACKGROUND}
ROLE_NAMES = {letter: name for letter, name, _ in ROLES}
# Without colour (NO_COLOR, a pipe) roles are marked with brackets instead.
PLAIN_MARKS = {"D": ("{", "}"), "A": ("[", "]"), "I": ("<", ">"), "P": ("^", "")}


def role_marks(record: dict[str, Any], n: int) -> list[str]:
    """Per response token, the role letters (P, A, D, I) it carries."""
    marks = [""] * n
    for letter, _, key in ROLES:
        for t in record["roles"][key]:
            marks[t] += letter
    return marks


def _background(mark: str) -> str | None:
    for letter in ("D", "A", "I"):
        if letter in mark:
            return letter
    return None


def token_style(mark: str) -> str:
    """The rich style of a token carrying the role letters ``mark`` ("" for none)."""
    back = _background(mark)
    if back is None:
        return PREPLAN_ALONE if "P" in mark else ""
    return BACKGROUND[back] + (" " + PREPLAN if "P" in mark else "")


def legend(color: bool = True) -> Text:
    """One line naming the role marks."""
    text = Text("roles: ", style="bold")
    for letter, name, _ in ROLES:
        if color:
            text.append(name, style=ROLE_STYLE[letter])
        else:
            left, right = PLAIN_MARKS[letter]
            text.append(f"{left}{name}{right}")
        text.append("  ")
    if color:
        text.append(
            "(a preplan token that is also an anchor: bold underlined on the anchor colour)", style="dim"
        )
    return text


def response_text(record: dict[str, Any], color: bool = True) -> Text:
    """The response as one Text, each token styled (or bracketed) by its roles."""
    r0 = int(record["response_start"])
    tokens = record["tokens"][r0:]
    marks = role_marks(record, len(tokens))
    text = Text()
    for tok, mark in zip(tokens, marks):
        if color:
            text.append(tok, style=token_style(mark))
            continue
        back = _background(mark)
        left, right = PLAIN_MARKS[back] if back else ("", "")
        if "P" in mark:
            left = "^" + left
        stripped = tok.lstrip()
        text.append(tok[: len(tok) - len(stripped)] + left + stripped + right)
    return text


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _top(record: dict[str, Any], role: str, metric: str, count: int = 3) -> str:
    """The ``count`` tokens of a role with the largest ``metric``, as ``'tok'@t``."""
    r0 = int(record["response_start"])
    tokens = record["tokens"][r0:]
    values = record["metrics"][metric]
    chosen = sorted(
        (t for t in record["roles"][role] if values[t] is not None), key=lambda t: (-values[t], t)
    )[:count]
    return ", ".join(f"{tokens[t].strip() or repr(tokens[t])}@{t}" for t in sorted(chosen)) or "-"


def answer_ok(record: dict[str, Any]) -> str:
    """yes / no (the report's rule: :func:`attnrhythm.views.report.record_correct`), or - without
    a reference answer."""
    correct = record_correct(record)
    return "-" if correct is None else "yes" if correct else "no"


def token_table(record: dict[str, Any], rows: int = 0) -> Table:
    """The per-token table (t, token, roles, WAAD, FAI, Delta, entropy, gamma)."""
    r0 = int(record["response_start"])
    tokens = record["tokens"][r0:]
    n = len(tokens)
    marks = role_marks(record, n)
    metrics, gam = record["metrics"], record["gamma"]
    table = Table(show_edge=False, pad_edge=False)
    for col in ("t", "token", "role", "WAAD", "FAI", "Δ", "entropy", "γ local", "γ global", "γ coupled"):
        table.add_column(col, justify="right" if col not in ("token", "role") else "left")
    limit = n if rows <= 0 else min(rows, n)
    for t in range(limit):
        table.add_row(
            str(t),
            repr(tokens[t])[1:-1],
            Text(marks[t], style=token_style(marks[t])),
            _fmt(metrics["waad"][t]),
            _fmt(metrics["fai"][t], 4),
            _fmt(metrics["delta"][t]),
            _fmt(metrics["entropy"][t]),
            _fmt(gam["local"][t], 2),
            _fmt(gam["global"][t], 2),
            _fmt(gam["coupled"][t], 2),
        )
    return table


def summary_table(records: list[dict[str, Any]], max_new_tokens: int | None = None) -> tuple[Table, str]:
    """One row per answer; columns whose value is the same for every answer are left out (with
    two or more answers) and named in the returned note instead."""
    names = ["#", "tokens", "ended", "correct", *ROLE_ORDER, "mean γ coupled"]
    rows = []
    for i, record in enumerate(records, 1):
        n = len(record["input_ids"]) - int(record["response_start"])
        coupled = record["gamma"]["coupled"]
        cut = max_new_tokens is not None and bool(record.get("generated", True)) and n >= max_new_tokens
        rows.append(
            [str(i), str(n), "cut" if cut else "done", answer_ok(record)]
            + [str(len(record["roles"][k])) for k in ROLE_ORDER]
            + [f"{sum(coupled) / len(coupled):.3f}"]
        )
    keep = [
        k for k, name in enumerate(names)
        if name == "#" or len(rows) < 2 or len({row[k] for row in rows}) > 1
    ]  # fmt: skip
    dropped = [f"{names[k]} {rows[0][k]}" for k in range(len(names)) if k not in keep]
    table = Table(show_lines=False)
    for k in keep:
        table.add_column(names[k], justify="right")
    for row in rows:
        table.add_row(*(row[k] for k in keep))
    note = ("same for every answer: " + ", ".join(dropped)) if dropped else ""
    return table, note


def show(
    console: Console,
    records: list[dict[str, Any]],
    tokens: bool = False,
    rows: int = 0,
    max_new_tokens: int | None = None,
) -> None:
    """Per record: the response coloured by role and its strongest anchors / preplan tokens
    (and with ``tokens`` the per-token table); then one summary table of all records."""
    color = console.color_system is not None and not console.no_color
    console.print(legend(color))
    for i, record in enumerate(records, 1):
        n = len(record["input_ids"]) - int(record["response_start"])
        question = " ".join(str(record.get("prompt", "")).split())
        # a Text title: shown as is whether or not the console reads markup (keys may hold brackets)
        console.rule(Text.assemble((f"#{i}", "bold"), " ", str(record.get("key", ""))), align="left")
        console.print(Text(question, style="dim"))
        console.print(response_text(record, color))
        console.print(
            Text.assemble(
                ("strongest anchors (FAI): ", "bold"),
                _top(record, "anchor", "fai"),
                ("   preplan (Δ WAAD): ", "bold"),
                _top(record, "preplan", "delta"),
            )
        )
        if tokens:
            console.print(token_table(record, rows))
            if 0 < rows < n:
                console.print(f"... {n - rows} more tokens (use --rows 0 for all)")
    table, note = summary_table(records, max_new_tokens)
    console.print(Text("summary", style="bold"))
    if len(table.columns) > 1:
        console.print(table)
    if note:
        console.print(note, highlight=False)
    if max_new_tokens is not None and any(
        len(r["input_ids"]) - int(r["response_start"]) >= max_new_tokens and r.get("generated", True)
        for r in records
    ):
        console.print(
            f"an answer marked cut stopped at --max-new-tokens {max_new_tokens}: raise it to see its end",
            highlight=False,
        )
