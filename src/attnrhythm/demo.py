"""Built-in problems and the terminal rendering of ``attnrhythm demo``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


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

ROLE_STYLE = {"P": "bold cyan", "A": "bold magenta", "D": "bold yellow", "I": "bold green"}
ROLE_NAMES = {"P": "preplan", "A": "anchor", "D": "dominated anchor", "I": "intro token"}


def final_number(text: str) -> float | None:
    """The last number in ``text`` (commas removed), or None."""
    found = re.findall(r"-?\d[\d,]*\.?\d*", text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def role_marks(record: dict[str, Any], n: int) -> list[str]:
    """Per response token, the role letters (P, A, D, I) it carries."""
    marks = [""] * n
    for letter, key in (("P", "preplan"), ("A", "anchor"), ("D", "dominated"), ("I", "intro")):
        for t in record["roles"][key]:
            marks[t] += letter
    return marks


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def show(console: Console, records: list[dict[str, Any]], rows: int = 0) -> None:
    """Print a token strip, a per-token table and a summary for each record."""
    legend = Text("roles: ")
    for letter, name in ROLE_NAMES.items():
        legend.append(f"{letter}={name} ", style=ROLE_STYLE[letter])
    console.print(legend)
    summary = Table(title="summary", show_lines=False)
    for col in ("trace", "tokens", "answer ok", "preplan", "anchor", "dominated", "intro", "mean γ coupled"):
        summary.add_column(col, justify="right")
    for record in records:
        r0 = record["response_start"]
        tokens = record["tokens"][r0:]
        n = len(tokens)
        marks = role_marks(record, n)
        metrics, gam = record["metrics"], record["gamma"]
        console.rule(f"[bold]{record.get('key', '')}[/bold]  {record.get('prompt', '')[:90]}")
        strip = Text()
        for tok, mark in zip(tokens, marks):
            style = ROLE_STYLE[mark[-1]] if mark else ""
            strip.append(tok, style=style)
        console.print(strip)
        table = Table(show_edge=False, pad_edge=False)
        for col in ("t", "token", "role", "WAAD", "FAI", "Δ", "entropy", "γ local", "γ global", "γ coupled"):
            table.add_column(col, justify="right" if col not in ("token", "role") else "left")
        limit = n if rows <= 0 else min(rows, n)
        for t in range(limit):
            table.add_row(
                str(t),
                repr(tokens[t])[1:-1],
                Text(marks[t], style=ROLE_STYLE[marks[t][-1]] if marks[t] else ""),
                _fmt(metrics["waad"][t]),
                _fmt(metrics["fai"][t], 4),
                _fmt(metrics["delta"][t]),
                _fmt(metrics["entropy"][t]),
                _fmt(gam["local"][t], 2),
                _fmt(gam["global"][t], 2),
                _fmt(gam["coupled"][t], 2),
            )
        console.print(table)
        if limit < n:
            console.print(f"... {n - limit} more tokens (use --rows 0 for all)")
        got = final_number(record.get("response", ""))
        ok = "-" if "answer" not in record else ("yes" if got == float(record["answer"]) else "no")
        coupled = record["gamma"]["coupled"]
        summary.add_row(
            str(record.get("key", "")),
            str(n),
            ok,
            *(str(len(record["roles"][k])) for k in ("preplan", "anchor", "dominated", "intro")),
            f"{sum(coupled) / len(coupled):.3f}",
        )
    console.print(summary)
