"""Digits test-split bits/dim: sdekit's dataset scorer against k-diffusion's log_likelihood on the same model and rows.

Model. A digits U-Net checkpoint (VP SDE, eps prediction, float32 weights), scored by both libraries as the
same function: k-diffusion sees it as a denoiser D(x, s) in its variance-exploding coordinates x = x0 + s n
through the VP <-> VE map x_vp = alpha(t) x_ve, s = sigma(t) / alpha(t), t = t(lambda = -2 log s)
(``KDenoiser`` below), so its ODE dx/ds = (x - D(x, s)) / s is the same probability-flow ODE in other
coordinates; log p_vp(x) = log p_ve(x / alpha(t_data)) - D log alpha(t_data), and its prior N(0, s_max^2 I)
is the image of the VP prior N(0, I) (s_max = sigma(T) / alpha(T)).

Rows. ``--rows`` test images evenly spread over the split, dequantised once per seed (sdekit's convention,
bin width 1/8, draws from (seed, row)); both libraries then score those same points (no further
dequantisation), so their values differ only by the solver and the Hutchinson probes.

Methods (each over ``--seeds`` seeds: probes and dequantisation draws):
  sdekit      ``sdekit.likelihood.score_dataset`` defaults: all rows in one solve, dopri5 in t at rtol = atol =
              DATASET_TOL, Hutchinson with 2 Rademacher probes in one solve (one draw per image here)
  sdekit 1 probe  the same with one probe: k-diffusion's estimator (one Rademacher probe per image), so the
              two differ in the solver alone; the default's second probe halves the estimator's variance
  k-diffusion ``k_diffusion.sampling.log_likelihood`` default call: dopri5 (torchdiffeq) in sigma, rtol = atol =
              1e-4, one Rademacher probe, all rows in one batch (torchdiffeq's RMS norm over the whole batch)
plus, once (seed 0), a bias study on ``--ref-rows`` of the rows (``bias_study``): the tight reference is sdekit's
exact trace in float64 along a trajectory solved at rtol = atol = ``--ref-tol``; each method's mean error on
those rows is reported too (solver + one draw of its estimator noise).

One process, one torch thread, float32 network for both timed methods. Run with the bench venv:

    nice /work/benchvenv/bin/python benchmarks/likelihood_digits.py --checkpoint runs/digits800

Writes benchmarks/results/likelihood_digits[_<name>].json and .png.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch

import sdekit
from sdekit.likelihood import DATASET_TOL, score_dataset
from sdekit.data import DIGITS_SCALE, load_digits
from sdekit.likelihood import LikelihoodConfig, dequantize
from sdekit.noise import RowNoise
from likelihood import load_kdiffusion
from report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))


class KDenoiser(torch.nn.Module):
    """An sdekit ScoreModel on a LinearSDE as a k-diffusion denoiser D(x_ve, s) = E[x0 | x_ve] (module docstring).
    s outside (s_min, s_max) (torchdiffeq's first-step probe) is clamped to the SDE's range."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        sde = model.sde
        lam = sde.log_snr(torch.tensor([sde.eps, sde.T], dtype=torch.float64))
        self.lam_hi, self.lam_lo = float(lam[0]), float(lam[1])

    def sigma_range(self) -> tuple[float, float]:
        return math.exp(-self.lam_hi / 2), math.exp(-self.lam_lo / 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        sde = self.model.sde
        lam = (-2 * s.double().log()).clamp(self.lam_lo, self.lam_hi)
        t = sde.t_from_log_snr(lam)
        a = sde.alpha(t).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return self.model.x0(a * x, t)


def kdiffusion_bpd(kds, model, x, D):
    """k-diffusion's default log_likelihood call on x (VP coordinates at t_data = eps), as bits/dim."""
    den = KDenoiser(model)
    s_min, s_max = den.sigma_range()
    a0 = float(model.sde.alpha(torch.tensor(model.sde.eps, dtype=torch.float64)))
    ll, info = kds.log_likelihood(den, x / a0, s_min, s_max)
    log_p = ll.double() - D * math.log(a0)
    return -(log_p + D * math.log(DIGITS_SCALE)) / (D * math.log(2)), info["fevals"]


def dequantised_rows(x, seed):
    cfg = LikelihoodConfig(data_scale=DIGITS_SCALE, dequantize=True, seed=seed)
    return dequantize(x, cfg, RowNoise(seed, x.shape[0], 0))


def _bpd_rows(model, x, dtype, **kw):
    """Bits/dim of the rows x (one batch) with the net and x in ``dtype``; kw: log_likelihood settings."""
    model.net.to(dtype)
    try:
        return sdekit.log_likelihood(model, x.to(dtype), data_scale=DIGITS_SCALE, **kw).bpd.double()
    finally:
        model.net.float()


def bias_study(model, x, ref_tol, fast_tol):
    """Solver + estimator bias of the fast settings on the rows x (bits/dim, mean over rows; one batch, so a
    row has fewer batch mates to tighten its steps than in a whole-split solve: an upper bound).

    reference        exact trace, float64: the trajectory at rtol = atol = ref_tol, the divergence integrated
                     along it by adaptive Boole quadrature in log-SNR to quad_tol = 1e-3 nats (integrate=
                     "quadrature": the exact trace only where the integrand needs it, which makes a tight
                     reference affordable on a shared CPU); again at 10 ref_tol and quad_tol 1e-2 for its own
                     convergence
    exact_fast       exact trace, float32, rtol = atol = fast_tol            -> solver + float32 bias
    hutch_fast       the default Hutchinson solve (2 Rademacher probes, float32, fast_tol) minus the same
                     probes solved tightly (float64, ref_tol)               -> the Hutchinson path's solver bias
                     (deterministic: the probes are the same); Hutchinson itself is unbiased, its noise is the
                     estimator error that score_dataset reports
    """
    t0 = time.perf_counter()
    quad = dict(divergence="exact", integrate="quadrature", quad_depth=6)
    ref = _bpd_rows(model, x, torch.float64, rtol=ref_tol, atol=ref_tol, quad_tol=1e-3, **quad)
    ref_loose = _bpd_rows(model, x, torch.float64, rtol=10 * ref_tol, atol=10 * ref_tol, quad_tol=1e-2, **quad)
    exact_fast = _bpd_rows(model, x, torch.float32, divergence="exact", rtol=fast_tol, atol=fast_tol)
    hutch = dict(divergence="hutchinson", probes=2, seed=0)
    h_fast = _bpd_rows(model, x, torch.float32, rtol=fast_tol, atol=fast_tol, **hutch)
    h_tight = _bpd_rows(model, x, torch.float64, rtol=ref_tol, atol=ref_tol, **hutch)
    out = {"rows": x.shape[0], "ref_tol": ref_tol, "fast_tol": fast_tol, "reference_bpd": float(ref.mean()),
           "reference_convergence": float((ref_loose - ref).mean()),
           "exact_fast_bias": float((exact_fast - ref).mean()),
           "exact_fast_max_abs_err": float((exact_fast - ref).abs().max()),
           "hutch_fast_solver_bias": float((h_fast - h_tight).mean()),
           "hutch_fast_max_abs_err": float((h_fast - h_tight).abs().max()),
           "hutch_minus_exact_tight": float((h_tight - ref).mean()), "seconds": time.perf_counter() - t0}
    print("bias study:", out, flush=True)
    return out, ref


def run(args):
    torch.set_num_threads(args.threads)
    kds, note = load_kdiffusion()
    if note:
        print(note)
    model, config = sdekit.load_model(args.checkpoint)
    model.net.float()
    x_all = load_digits("test").x
    stride = max(1, x_all.shape[0] // args.rows)
    x_all = x_all[torch.arange(0, x_all.shape[0], stride)[:args.rows]]
    D = x_all[0].numel()
    rows = []
    bias = None
    ref_rows = min(args.ref_rows, x_all.shape[0])
    for seed in range(args.seeds):
        x = dequantised_rows(x_all, seed)
        ref = None
        if ref_rows and seed == 0:
            bias, ref = bias_study(model, x[::max(1, x.shape[0] // ref_rows)][:ref_rows], args.ref_tol, DATASET_TOL)
            ref_idx = torch.arange(0, x.shape[0], max(1, x.shape[0] // ref_rows))[:ref_rows]
        for method, probes in (("sdekit", None), ("sdekit 1 probe", 1)):
            start = time.perf_counter()
            score = score_dataset(model, x, LikelihoodConfig(data_scale=DIGITS_SCALE, seed=seed), probes=probes)
            t_ours = time.perf_counter() - start
            row = {"seed": seed, "method": method, "bpd": score.bpd, "bpd_se": score.bpd_se,
                   "se_estimator": score.se_estimator, "nfe": score.nfe, "time_s": t_ours,
                   "per_image_s": t_ours / x.shape[0], "cpu_s": score.cpu_seconds, "divergence": score.divergence,
                   "probes": score.probes, "rtol": score.rtol}
            if ref is not None:
                row["mean_err_ref_rows"] = float((score.per_image[ref_idx] - ref).mean())
            rows.append(row)
            print(row, flush=True)
        if kds is not None and not args.no_kdiffusion:
            torch.manual_seed(seed)  # k-diffusion draws its probe from the global generator
            start, cpu = time.perf_counter(), time.process_time()
            kd, nfe = kdiffusion_bpd(kds, model, x, D)
            t_kd = time.perf_counter() - start
            row = {"seed": seed, "method": "k-diffusion", "bpd": float(kd.mean()),
                   "bpd_se": float(kd.std() / math.sqrt(kd.numel())), "nfe": int(nfe), "time_s": t_kd,
                   "per_image_s": t_kd / x.shape[0], "cpu_s": time.process_time() - cpu}
            if ref is not None:
                row["mean_err_ref_rows"] = float((kd[ref_idx] - ref).mean())
            rows.append(row)
            print(row, flush=True)
        if ref is not None:
            rows.append({"seed": seed, "method": "reference", "bpd_ref_rows": float(ref.mean()), "rows": ref_rows,
                         "tol": args.ref_tol})
    return rows, note, config, bias


def summary(rows):
    out = {}
    for m in ("sdekit", "sdekit 1 probe", "k-diffusion"):
        r = [row for row in rows if row["method"] == m]
        if not r:
            continue
        t = sorted(row["per_image_s"] for row in r)
        out[m] = {"per_image_s_median": statistics.median(t), "per_image_s_min": t[0], "per_image_s_max": t[-1],
                  "cpu_per_image_s_median": statistics.median(row["cpu_s"] / row["time_s"] * row["per_image_s"]
                                                              for row in r),
                  "bpd_median": statistics.median(row["bpd"] for row in r),
                  "nfe_median": statistics.median(row["nfe"] for row in r)}
        errs = [row["mean_err_ref_rows"] for row in r if "mean_err_ref_rows" in row]
        if errs:
            out[m]["mean_err_ref_rows"] = errs[0]
    if "k-diffusion" in out:
        for m, tag in (("sdekit", ""), ("sdekit 1 probe", "_1_probe")):
            if m in out:
                out[f"time_ratio_sdekit{tag}_over_kdiffusion"] = out[m]["per_image_s_median"] / \
                    out["k-diffusion"]["per_image_s_median"]
                out[f"cpu_time_ratio_sdekit{tag}_over_kdiffusion"] = out[m]["cpu_per_image_s_median"] / \
                    out["k-diffusion"]["cpu_per_image_s_median"]
    return out


def plot(rows, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, marker in (("sdekit", "o"), ("sdekit 1 probe", "^"), ("k-diffusion", "s")):
        r = [row for row in rows if row["method"] == m]
        if r:
            ax.scatter([row["per_image_s"] for row in r], [row["bpd"] for row in r], marker=marker, s=60, label=m)
    ref = [row for row in rows if row["method"] == "reference"]
    if ref:
        ax.axhline(ref[0]["bpd_ref_rows"], color="gray", ls="--", lw=0.8,
                   label=f"exact float64 reference ({ref[0]['rows']} rows)")
    ax.set_xscale("log")
    ax.set_xlabel("wall time per image (s, one thread)")
    ax.set_ylabel("bits/dim (mean over the rows)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rows", type=int, default=64, help="test rows, evenly spread (299 = the whole split)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ref-rows", type=int, default=8)
    p.add_argument("--ref-tol", type=float, default=1e-7)
    p.add_argument("--no-kdiffusion", action="store_true", help="sdekit rows (and the bias study) only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None, help="suffix of the result files (default: the checkpoint's folder)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    rows, note, config, bias = run(args)
    summ = summary(rows)
    summ["bias_study"] = bias
    print(summ)
    name = args.name or os.path.basename(os.path.normpath(args.checkpoint))
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "checkpoint": args.checkpoint,
            "step": config.get("step"), "rows": args.rows, "seeds": args.seeds, "note": note}
    title = f"digits test, {args.rows} rows, {name} (step {config.get('step')})"
    write_report(args.out, f"likelihood_digits_{name}", {"meta": meta, "summary": summ, "rows": rows},
                 lambda path: plot(rows, title, path))


if __name__ == "__main__":
    main()
