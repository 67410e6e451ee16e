"""User-facing errors: one line that says what went wrong and how to fix it."""

from __future__ import annotations


class AttnRhythmError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(err)`` as a single line and exits with a non-zero code; the
    message always says what to do about it.
    """

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
