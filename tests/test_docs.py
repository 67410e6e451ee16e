"""The docs site's sources: every nav page exists, and nothing in the repository points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".py", ".md", ".yml", ".yaml", ".toml", ".js", ".css", ".txt", ""}
    return [ROOT / p for p in out.splitlines() if Path(p).suffix in suffixes and (ROOT / p).is_file()]


def test_nothing_points_outside_the_repository():
    offenders = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in ("../shared", "METHOD.md", "DESIGN.md"):
            if needle in text and path.name != "test_docs.py":
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_every_nav_page_and_relative_link_exists():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = re.findall(r":\s*([\w/-]+\.md)\s*$", config, flags=re.M)
    assert "method.md" in pages and "records.md" in pages and "verified.md" in pages
    missing = [p for p in pages if not (ROOT / "docs" / p).is_file()]
    assert not missing, missing
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (md.parent / target).exists(), f"{md.name} links to a missing {target}"


def test_method_page_states_every_default():
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    for default in ("W = 10", "(10, 50)", "q = 0.4", "amp = 1.5", "alpha = 0.5", "k = 3", "0.3",
                    "arxiv.org/abs/2510.13554", "numpy.linspace(L//3, 2*L//3, 5)"):  # fmt: skip
        assert default in text, default
