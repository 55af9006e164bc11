"""Two CPU processes over gloo on the loopback address give the numbers of one process."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdekit
from sdekit import distributed
from sdekit.data import toy_data
from sdekit.nets import MLP
from sdekit.train import Trainer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def problem():
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.3, 0.5])
    x_T = sde.prior_sample((13, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gm.model(sde), x_T


JOBS = [
    ("euler_maruyama", dict(steps=8)),         # stochastic: per-row noise
    ("dopri5", dict(rtol=1e-4, atol=1e-4)),    # adaptive: steps chosen per chunk
]


LIKELIHOOD = dict(divergence="hutchinson", probes=3, seed=2, rtol=1e-4, atol=1e-4)


def worker(rank, world, port, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, x_T = problem()
        results = []
        for solver, opts in JOBS:
            sol = distributed.sample_sharded(model, x_T, solver, chunk_size=4, generator=5, **opts)
            results.append(None if sol is None else (sol.x, sol.nfe))
        results.append(distributed.log_likelihood_sharded(model, x_T, chunk_size=4, **LIKELIHOOD))
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    out = tmp_path / "two.pt"
    mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    two = torch.load(out)
    model, x_T = problem()
    for (solver, opts), (x2, nfe2) in zip(JOBS, two[:-1]):
        one = distributed.sample_sharded(model, x_T, solver, chunk_size=4, generator=5, **opts)
        assert torch.equal(one.x, x2), solver
        assert one.nfe == nfe2
        assert one.stats["world_size"] == 1
    lik_one = distributed.log_likelihood_sharded(model, x_T, chunk_size=4, **LIKELIHOOD)
    for key in ("log_prob", "bpd", "prior", "delta", "stderr"):
        assert torch.equal(lik_one[key], two[-1][key]), key
    assert lik_one["nfe"] == two[-1]["nfe"]


def test_likelihood_probes_are_per_row():
    """Row i's Hutchinson probes depend on (seed, row_offset + i) only: a shard reproduces its rows."""
    model, x_T = problem()
    full = sdekit.log_likelihood(model, x_T[:4], divergence="hutchinson", probes=2, seed=3, method="rk4",
                                 step_size=0.05)
    part = sdekit.log_likelihood(model, x_T[2:4], divergence="hutchinson", probes=2, seed=3, method="rk4",
                                 step_size=0.05, row_offset=2)
    torch.testing.assert_close(full.log_prob[2:], part.log_prob, rtol=1e-12, atol=1e-12)


def test_sharded_equals_plain_sample_for_row_independent_solvers():
    model, x_T = problem()
    sharded = distributed.sample_sharded(model, x_T, "euler_maruyama", chunk_size=3, generator=9, steps=5)
    plain = sdekit.solvers.sample(model, x_T, "euler_maruyama", steps=5, generator=9)
    torch.testing.assert_close(sharded.x, plain.x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="chunk_size"):
        distributed.sample_sharded(model, x_T, "euler", chunk_size=0, steps=3)


def train_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = MLP(dim=2, width=32, depth=2)
        data = toy_data("moons", 512, seed=0)
        trainer = Trainer(net, sdekit.VPSDE(), data, "eps", batch_size=32, lr=1e-3, seed=0)
        trainer.run(40, progress=False, out_dir=out_dir)  # every rank calls save; rank 0 writes
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        torch.save(flat, f"{out_dir}/params_rank{rank}.pt")
        # exact resume on two ranks: 20 + (save, resume) + 20 equals the 40 straight steps above
        torch.manual_seed(0)
        half = Trainer(MLP(dim=2, width=32, depth=2), sdekit.VPSDE(), data, "eps", batch_size=32, lr=1e-3, seed=0)
        half.run(20, progress=False, out_dir=f"{out_dir}/half")
        resumed = Trainer.resume(f"{out_dir}/half", data)
        resumed.run(20, progress=False)
        flat = torch.cat([p.detach().reshape(-1) for p in resumed.net.parameters()])
        torch.save(flat, f"{out_dir}/resumed_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_training_keeps_ranks_in_step(tmp_path):
    """Two gloo ranks train with DistributedDataParallel: the weights stay identical on both ranks,
    differ from the initial ones, rank 0's checkpoint loads, and resuming on two ranks is exact."""
    mp.start_processes(train_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    p0, p1 = torch.load(tmp_path / "params_rank0.pt"), torch.load(tmp_path / "params_rank1.pt")
    assert torch.equal(p0, p1)
    assert torch.equal(torch.load(tmp_path / "resumed_rank0.pt"), p0)
    assert torch.equal(torch.load(tmp_path / "resumed_rank1.pt"), p0)
    with pytest.warns(UserWarning, match="written by 2 ranks and resumes in one process"):
        resumed = Trainer.resume(tmp_path / "half", toy_data("moons", 512, seed=0))
    assert resumed.step_count == 20
    model, config = sdekit.load_model(tmp_path, use_ema=False)
    loaded = torch.cat([p.detach().reshape(-1) for p in model.net.parameters()])
    assert torch.equal(loaded, p0) and config["step"] == 40
    torch.manual_seed(0)
    init = torch.cat([p.detach().reshape(-1) for p in MLP(dim=2, width=32, depth=2).parameters()])
    assert not torch.allclose(init, p0)

