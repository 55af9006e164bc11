"""SDE factories shared by the tests: every built-in plus a custom one defined by f and g only."""
import torch

import sdekit


class CustomVP(sdekit.LinearSDE):
    """A user's SDE: VP with a quadratic beta, given only f and g."""

    def __init__(self, b0=0.2, b1=12.0, T=1.0):
        super().__init__(T=T, eps=1e-3)
        self.b0, self.b1 = b0, b1

    def beta(self, t):
        return self.b0 + (self.b1 - self.b0) * t**2

    def f(self, t):
        return -0.5 * self.beta(t)

    def g(self, t):
        return torch.sqrt(self.beta(t))


def builtin_sdes():
    return {
        "vp": sdekit.VPSDE(),
        "subvp": sdekit.SubVPSDE(),
        "ve": sdekit.VESDE(sigma_min=0.01, sigma_max=20.0),
        "cosine": sdekit.CosineVPSDE(),
        "custom": CustomVP(),
    }


KINDS = ["vp", "subvp", "ve", "cosine", "discrete"]


def make_sde(kind, a, b):
    """A built-in SDE with parameters drawn from [0, 1]^2."""
    if kind == "vp":
        return sdekit.VPSDE(beta_min=0.05 + a, beta_max=5 + 25 * b)
    if kind == "subvp":
        return sdekit.SubVPSDE(beta_min=0.05 + a, beta_max=5 + 25 * b)
    if kind == "ve":
        return sdekit.VESDE(sigma_min=0.005 + 0.1 * a, sigma_max=1 + 80 * b)
    if kind == "cosine":
        return sdekit.CosineVPSDE(s=0.001 + 0.02 * a, T=0.9 + 0.09 * b)
    if kind == "discrete":
        n = 8 + int(16 * a)
        return sdekit.DiscreteVPSDE.linear(n, beta_start=1e-4, beta_end=0.02 + 0.3 * b)
    raise AssertionError(kind)
