"""Solver + precision bias of the fast whole-split bits/dim (``sdekit.score_dataset`` defaults) on digits checkpoints.

The fast setting (float32 network, dopri5 at rtol = atol = ``DATASET_TOL``, Hutchinson with Rademacher probes, 2
dequantisation draws per image) is compared with the same estimator on the same rows, probes and dequantisation
draws (they are drawn per row from the seed) solved in float64 at rtol = atol = 1e-6. Hutchinson's estimate of the
log-density is unbiased for fixed x (the trajectory does not depend on the probe and the trace estimate is linear
in the integral), so the difference is the whole bias of the fast setting: solver error plus float32 rounding.

    python benchmarks/likelihood_solver_bias.py runs/digits300 runs/digits2500 --rows 24

Writes benchmarks/results/likelihood_solver_bias.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import sdekit
from sdekit.checkpoint import load_model
from sdekit.data import DIGITS_SCALE, load_digits
from sdekit.likelihood import LikelihoodConfig

HERE = os.path.dirname(os.path.abspath(__file__))


def bias_of(ckpt: str, rows: int, tight: float) -> dict:
    model, config = load_model(ckpt)
    x_all = load_digits("test").x
    idx = torch.arange(0, x_all.shape[0], max(1, x_all.shape[0] // rows))[:rows]
    out = {"checkpoint": ckpt, "step": config.get("step"), "rows": idx.tolist()}
    for name, dtype, tol in (("fast", torch.float32, None), ("tight", torch.float64, tight)):
        model.net.to(dtype)  # type: ignore[attr-defined]
        cfg = LikelihoodConfig(seed=0, data_scale=DIGITS_SCALE, dequantize=True)
        t0 = time.process_time()
        s = sdekit.score_dataset(model, x_all[idx].to(dtype), cfg, divergence="hutchinson", rtol=tol, atol=tol)
        out[name] = {"bpd": s.bpd, "per_image": s.per_image.double().tolist(), "nfe": s.nfe,
                     "cpu_s": time.process_time() - t0, "rtol": s.rtol}
    d = torch.tensor(out["fast"]["per_image"]) - torch.tensor(out["tight"]["per_image"])
    out["bias_bpd"] = float(d.mean())
    out["bias_se"] = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    out["max_abs_row_diff"] = float(d.abs().max())
    print(f"{ckpt}: fast {out['fast']['bpd']:.5f} ({out['fast']['nfe']} NFE)  tight {out['tight']['bpd']:.5f} "
          f"({out['tight']['nfe']} NFE)  bias {out['bias_bpd']:+.5f} +- {out['bias_se']:.5f} bits/dim  "
          f"max |row diff| {out['max_abs_row_diff']:.4f}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--tight", type=float, default=1e-6)
    p.add_argument("--out", default=os.path.join(HERE, "results", "likelihood_solver_bias.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = [bias_of(c, args.rows, args.tight) for c in args.checkpoints]
    with open(args.out, "w") as fh:
        json.dump({"torch": torch.__version__, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
