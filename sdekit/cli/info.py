"""``sdekit info``: versions, the built-in SDEs and the registered solvers."""
from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("info", help="versions, the built-in SDEs and the registered solvers")


def run(args) -> int:
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
