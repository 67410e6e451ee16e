"""The ``attnrhythm`` command line (typer + rich). ``attnrhythm COMMAND --help`` is the manual.

This module only builds the app and runs it (:func:`main`); the commands live in one module per
group: :mod:`.analysis` (analyze, heads), :mod:`.views` (demo, report, figure), :mod:`.study`,
:mod:`.train` (train, eval); :mod:`.options` holds what they share.
"""

from __future__ import annotations

import sys

import typer

from attnrhythm.cli import analysis, diff, study, train, views
from attnrhythm.cli import options as opts
from attnrhythm.errors import AttnRhythmError

try:  # typer >= 0.26 vendors its own click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer with the separate click package
    from click import exceptions as click_exceptions

# typer >= 0.26 has Abort in typer.exceptions; older click-based typer in click.exceptions
_ABORT = getattr(typer, "Abort", None) or getattr(click_exceptions, "Abort", KeyboardInterrupt)

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help is plain text: [layer, head] and [default: ...] keep their brackets
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Read the preplan-and-anchor rhythm of a causal LM from its attention, in one streaming pass.",
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(
            args=argv if argv is not None else sys.argv[1:], prog_name="attnrhythm", standalone_mode=False
        )
    except AttnRhythmError as err:
        opts.tagged("error:", str(err))
        sys.exit(err.exit_code)
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click_exceptions.ClickException as err:
        hint = f" (see `attnrhythm {err.ctx.info_name if getattr(err, 'ctx', None) else ''} --help`)"
        opts.tagged("error:", f"{err.format_message()}{hint.replace('attnrhythm attnrhythm', 'attnrhythm')}")
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except _ABORT:
        opts.console.print("aborted", highlight=False)
        sys.exit(130)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


# the commands, one module per group (help lists them in this order)
app.command()(analysis.analyze)
app.command()(views.demo)
app.command()(views.report)
app.command()(views.figure)
app.command()(analysis.heads)
study.register(app)
train.register(app)
diff.register(app)

if __name__ == "__main__":
    main()
