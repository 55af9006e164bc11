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

# small tensors: one thread avoids OpenMP spin-waiting on a shared 2-core machine
torch.set_num_threads(1)


@pytest.fixture
def f64():
    return torch.float64
