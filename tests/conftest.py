import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI machines are shared and noisy: no per-example deadline, derandomized examples.
settings.register_profile(
    "ci", deadline=None, derandomize=True, max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors on a shared 2-core machine: a second intra-op thread only adds OpenMP spin-waiting
    (10x slower measured) and nondeterministic reductions. Reset before every test, since commands under
    test may change it."""
    torch.set_num_threads(1)
    yield
