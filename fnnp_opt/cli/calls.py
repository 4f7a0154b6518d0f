"""How the command line runs a library call: an error becomes one line and an exit code, Ctrl-C (or SIGTERM) a
clean stop that says how to go on, and torchrun's job is joined where a command runs under it."""

from __future__ import annotations

import logging
import shlex
import sys
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, NoReturn, TypeVar

import typer
from rich.logging import RichHandler
from rich.markup import escape

from fnnp_opt import FnnpError, commands
from fnnp_opt.cli.render import console

state: dict = {"debug": False, "command": None}  # --debug, and the command being run
T = TypeVar("T")


def call(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run a library call; turn an :class:`FnnpError` into one stderr line and an exit code."""
    try:
        return fn(*args, **kwargs)
    except FnnpError as exc:
        if state["debug"]:
            raise
        console.print(f"[red]error:[/red] {escape(commands.redact(str(exc)))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        interrupted()
    except Exception as exc:  # a library that, interrupted mid-write, raises its own error while handling Ctrl-C
        if isinstance(exc, (typer.Exit, typer.Abort)) or not raised_by_ctrl_c(exc):
            raise
        interrupted()


RESUMABLE = ("train", "run", "finetune", "correlate")  # the commands whose work a second call continues


def interrupted() -> NoReturn:
    """Say that Ctrl-C (or SIGTERM) stopped the command, and how to go on; exit with 130."""
    if state["command"] in RESUMABLE:
        console.print("interrupted; run the same command again to resume", highlight=False)
    else:
        console.print("stopped", highlight=False)
    raise typer.Exit(130)


@contextmanager
def torchrun_job() -> Iterator:
    """Under torchrun, join its job for the block (:func:`fnnp_opt.distributed.session`); else nothing. A job
    that cannot be joined is one line, as any other error."""
    with ExitStack() as stack:
        command, state["command"] = state["command"], "join"  # Ctrl-C while joining: nothing ran, "stopped"
        try:
            group = call(stack.enter_context, commands.session())
        finally:
            state["command"] = command
        yield group


def raised_by_ctrl_c(exc: BaseException | None) -> bool:
    """Whether ``exc`` was raised while Ctrl-C was being handled (a KeyboardInterrupt among its causes)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM's handler: stop as Ctrl-C does."""
    raise KeyboardInterrupt  # a clean stop, as Ctrl-C: the study and the checkpoints stay resumable


def check_torchrun(command: str | None) -> None:
    """Refuse a command that runs in one process only when torchrun started several (each would do it all)."""
    launch = call(commands.launched)  # torchrun's variables, checked here for every command: one line on a bad one
    several = commands.TORCHRUN_COMMANDS
    if command not in several and launch is not None:
        console.print(
            f"[red]error:[/red] fnnp-opt {command} runs in one process, but torchrun started several; only "
            f"{' and '.join(several)} run under torchrun: run it without torchrun (or with --nproc-per-node 1)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)


def command_line() -> str:
    """The command as typed, passwords of storage URLs shown as ``***`` (a card records it)."""
    return commands.redact("fnnp-opt " + " ".join(shlex.quote(commands.redact_url(a)) for a in sys.argv[1:]))


def configure_logging(debug: bool, verbose: bool) -> None:
    """Logs on stderr: through Rich on a terminal, else one timestamped line per event; passwords redacted."""
    handler: logging.Handler
    if console.is_terminal:
        handler, fmt = RichHandler(console=console, show_path=False, show_time=False), "%(message)s"
    else:  # a log file, a pipe, CI: one timestamped line per event, each trial and epoch among them
        handler, fmt = logging.StreamHandler(sys.stderr), commands.LOG_LINE
    handler.addFilter(commands.RedactingFilter())  # no storage password reaches the screen
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format=fmt, handlers=[handler], force=True)
    quiet = logging.WARNING if console.is_terminal else logging.INFO
    logging.getLogger("fnnp_opt").setLevel(logging.DEBUG if debug else logging.INFO if verbose else quiet)
