"""The ``sdekit`` command.

Each subcommand is a pair of functions here: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` does the work by calling the library (imports are local so that ``sdekit --help``
stays fast). Register a new command by adding its pair to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys


# -- info --------------------------------------------------------------------------------------
def _add_info(sub):
    sub.add_parser("info", help="versions, the built-in SDEs and the registered solvers")


def _run_info(args) -> int:
    import torch

    import sdekit

    print(f"sdekit {sdekit.__version__}  torch {torch.__version__}")
    print("SDEs: VPSDE, SubVPSDE, VESDE, CosineVPSDE, DiscreteVPSDE, or subclass LinearSDE with f(t), g(t)")
    try:
        from sdekit import solvers

        print("solvers:", ", ".join(solvers.available()))
    except ImportError:
        pass
    return 0


COMMANDS = {
    "info": (_add_info, _run_info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
