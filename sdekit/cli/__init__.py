"""The ``sdekit`` command.

Each subcommand is a module of this package with two public functions: ``add_parser(subparsers)`` declares
its arguments and ``run(args)`` does the work by calling the library (imports of torch are local so that
``sdekit --help`` stays fast). Bad input raises ValueError (or a ``SolverError``, an OSError) and ``main``
reports it as one "sdekit <cmd>: error: ..." line with exit code 2. Register a new command in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..solvers.base import SolverError
from . import compare, info, likelihood, sample, train

__all__ = ["main", "build_parser", "COMMANDS", "USER_ERRORS"]

# user-input errors of any subcommand: one "sdekit <cmd>: error: ..." line and exit code 2, never a traceback
USER_ERRORS = (ValueError, SolverError, OSError)
COMMANDS = {"info": info, "sample": sample, "likelihood": likelihood, "train": train, "compare": compare}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside training's own handler: unwinds like Ctrl-C, so claims and temporary files are released."""

    signum = signal.SIGTERM


def _on_sigterm(signum, frame):
    raise _Terminated("terminated by SIGTERM")


def main(argv=None) -> int:
    """Run one subcommand. Bad input of any kind ends in "sdekit <cmd>: error: ..." on stderr and exit code 2
    (argparse's own errors exit 2 as well); SIGINT / SIGTERM end the command cleanly with 128 + the signal
    (training finishes its step and saves first)."""
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command].run(args)
    except USER_ERRORS as err:
        print(f"sdekit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"sdekit {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

