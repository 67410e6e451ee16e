"""Running ``attnrhythm.cli.main`` in tests and reading its one-line errors."""

from __future__ import annotations

import pytest

from attnrhythm.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``attnrhythm ARGS``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line of stderr (fails if there is more or less)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    return lines[0]
