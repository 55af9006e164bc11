"""Throughput of sharded sampling and likelihood at 1 and N processes, with the same numbers out.

Run once per world size (gloo on CPUs):

    torchrun --nproc_per_node 1 benchmarks/distributed_throughput.py
    torchrun --nproc_per_node 2 benchmarks/distributed_throughput.py

Each run appends its timings to benchmarks/results/distributed.json and saves its outputs; a later run
checks that its numbers equal those of every earlier world size bit for bit, then prints the table.
Problem: the built-in 16-D mixture under the VP SDE with its exact score, float64; sampling with
dpmpp_2m (20 steps) and dopri5 (adaptive, rtol = atol = 1e-5); likelihood with the exact divergence.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import sdekit
from sdekit import distributed

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--lik-rows", type=int, default=128)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rank, world = distributed.init_process_group()
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=args.dim)
    model = gm.model(sde)
    x_T = sde.prior_sample((args.rows, args.dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_data = gm.sample(args.lik_rows, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    results, outputs = {}, {}
    jobs = [
        ("sample dpmpp_2m 20 steps", args.rows,
         lambda: distributed.sample_sharded(model, x_T, "dpmpp_2m", chunk_size=args.chunk, steps=20)),
        ("sample dopri5 (adaptive)", args.rows,
         lambda: distributed.sample_sharded(model, x_T, "dopri5", chunk_size=args.chunk, rtol=1e-5, atol=1e-5)),
        ("likelihood exact divergence", args.lik_rows,
         lambda: distributed.log_likelihood_sharded(model, x_data, chunk_size=args.chunk // 4)),
    ]
    for name, rows, job in jobs:
        if world > 1:
            torch.distributed.barrier()
        start = time.perf_counter()
        out = job()
        elapsed = time.perf_counter() - start
        if rank == 0:
            value = out.x if isinstance(out, sdekit.Solution) else out["log_prob"]
            results[name] = {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}
            outputs[name] = value

    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        torch.save(outputs, os.path.join(args.out, f"distributed_outputs_world{world}.pt"))
        path = os.path.join(args.out, "distributed.json")
        report = json.load(open(path)) if os.path.exists(path) else {"settings": vars(args), "runs": {}}
        results["load_average_1min"] = os.getloadavg()[0]
        report["runs"][str(world)] = results
        same = {}
        for other in report["runs"]:
            f = os.path.join(args.out, f"distributed_outputs_world{other}.pt")
            if other != str(world) and os.path.exists(f):
                theirs = torch.load(f)
                same[other] = all(torch.equal(outputs[k], theirs[k]) for k in outputs)
        report["runs"][str(world)]["identical_to_world_sizes"] = same
        with open(path, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"{'job':<30} " + " ".join(f"{'rows/s @' + w:>12}" for w in sorted(report["runs"])))
        print(f"{'load average (1 min)':<30} " + " ".join(f"{report['runs'][w].get('load_average_1min', float('nan')):>12.2f}"
                                                        for w in sorted(report["runs"])))
        for name, _, _ in jobs:
            cells = [f"{report['runs'][w][name]['rows_per_s']:>12.1f}" if name in report["runs"][w] else f"{'-':>12}"
                     for w in sorted(report["runs"])]
            print(f"{name:<30} " + " ".join(cells))
        print(f"identical outputs to earlier world sizes: {same or 'no earlier run'}")
        print(f"wrote {path}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
