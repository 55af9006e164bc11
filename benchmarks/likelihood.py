"""Probability-flow log-likelihood: sdekit against k-diffusion and a score_sde-style estimator.

Problem. Gaussian mixtures (``GaussianMixture.default(dim)``, 2-D and 16-D) under the EDM / k-diffusion
process x_sigma = x0 + sigma n (``sdekit.interop.EDMSDE``: time is sigma, sigma in [0.002, 80]). Every
method integrates the same ODE dx/dsigma = -sigma score(x, sigma) from sigma_min to sigma_max with the
mixture's exact score, and estimates log p_{sigma_min}(x) at exact samples x ~ p_{sigma_min}; the
analytic value is ``gm.log_prob(x, sigma_min, sde)``.

Methods.
  sdekit exact          sdekit.log_likelihood, exact divergence: dopri5 at its default rtol = atol = 1e-5,
                        dopri5 at 1e-4 (sdekit's integration core), dopri8 at 1e-3 (torchdiffeq behind it)
  sdekit exact, quad    the same with integrate="quadrature": the trajectory alone by dopri5 at
                        rtol = atol = 1e-5 (the default) and 1e-4, then each row's exact divergence by
                        adaptive Boole quadrature in log-SNR to quad_tol = 0.1 (the default)
  sdekit hutch-1        sdekit.log_likelihood, one Rademacher probe, rtol = atol = 1e-4
  k-diffusion           k_diffusion.sampling.log_likelihood: dopri5, rtol = atol = 1e-4, one Rademacher
                        probe, prior N(0, sigma_max^2) -- its default call. The denoiser is
                        D(x, sigma) = x + sigma^2 score(x, sigma).
  score_sde-style       written here after score_sde's likelihood.py: scipy solve_ivp RK45 on CPU with a
                        numpy round trip per evaluation, one Rademacher probe, rtol = atol = 1e-5.

Priors. sdekit and the score_sde-style estimator take the mixture's exact p_{sigma_max} as the prior.
k-diffusion's prior is fixed to N(0, sigma_max^2), which is not exactly p_{sigma_max}; its error is
reported after subtracting the analytic prior gap log N(z; 0, sigma_max^2) - log p_{sigma_max}(z) at the
latent z of sdekit's exact solve of the same ODE (the trajectory does not depend on the probe, and
|d gap / dz| <= |z| / sigma_max^2, so the latents' solver differences do not matter). The raw error is
reported too.

All in float64, one process, one torch thread, each method timed ``--repeats`` times (interleaved) after
one warm-up call; the table shows the median wall time. Run with the bench venv:

    /work/benchvenv/bin/python benchmarks/likelihood.py

Writes benchmarks/results/likelihood.json and benchmarks/results/likelihood.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import types

import numpy as np
import torch

import sdekit
from sdekit.interop import EDMSDE
from report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))


# -- k-diffusion (lazy) ------------------------------------------------------------------------------
def load_kdiffusion():
    """k_diffusion.sampling, or (None, reason). k_diffusion/__init__ imports optional extras (clip needs
    pkg_resources, which recent setuptools dropped); when only those fail, load the sampling module alone."""
    try:
        import k_diffusion.sampling as kds  # noqa: F401

        return kds, None
    except ModuleNotFoundError as err:
        if err.name == "k_diffusion":
            return None, "k-diffusion is not installed (pip install k-diffusion): its rows are skipped"
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            return None, f"k-diffusion could not be imported ({err}): its rows are skipped"
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
        try:
            import k_diffusion.sampling as kds

            return kds, f"note: k_diffusion/__init__ failed ({err}); loaded k_diffusion.sampling on its own"
        except Exception as err2:  # noqa: BLE001
            return None, f"k-diffusion could not be imported ({err2}): its rows are skipped"


# -- score_sde-style estimator ---------------------------------------------------------------------
def scoresde_style_log_likelihood(model, x, t0, t1, prior_log_prob, rtol=1e-5, atol=1e-5, seed=0):
    """After score_sde's likelihood.py: the augmented ODE [x, logp] solved by scipy's RK45 on CPU with
    a numpy round trip per evaluation, divergence by one Rademacher Hutchinson probe."""
    from scipy import integrate

    sde = model.sde
    shape, n = x.shape, x.numel()
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randint(0, 2, shape, generator=gen).to(x.dtype) * 2 - 1
    nfe = 0

    def ode_func(t, y):
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[:n]).reshape(shape).requires_grad_(True)
        with torch.enable_grad():
            drift = sde.probability_flow_drift(xt, t, model.score(xt, t))
            grad = torch.autograd.grad((drift * eps).sum(), xt)[0]
        div = (grad * eps).reshape(shape[0], -1).sum(1)
        return np.concatenate([drift.detach().numpy().reshape(-1), div.numpy()])

    y0 = np.concatenate([x.numpy().reshape(-1), np.zeros(shape[0])])
    sol = integrate.solve_ivp(ode_func, (t0, t1), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[:n, -1]).reshape(shape)
    delta = torch.from_numpy(sol.y[n:, -1])
    return prior_log_prob(z) + delta, nfe


# -- the benchmark ------------------------------------------------------------------------------------
def run(dims, n, repeats, seed, exact_configs, quad_configs=(), threads=1):
    torch.set_num_threads(threads)
    kds, kd_note = load_kdiffusion()
    if kd_note:
        print(kd_note)
    sde = EDMSDE(sigma_min=0.002, sigma_max=80.0)
    smin, smax = sde.eps, sde.T
    wide = EDMSDE(sigma_min=0.002, sigma_max=1e6)
    rows, costs = [], {}
    for dim in dims:
        gm = sdekit.GaussianMixture.default(dim=dim)
        model = gm.model(sde)
        x = gm.sample_t(n, smin, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        truth = gm.log_prob(x, smin, sde)
        exact_prior = lambda z, gm=gm: gm.log_prob(z, smax, sde)  # noqa: E731

        def denoiser(xx, sigma, gm=gm):
            # torchdiffeq's first-step heuristic may probe sigma beyond sigma_max: evaluate the exact
            # score on a wider EDM range (same process, alpha = 1 and sigma = t)
            return xx + sigma.reshape(-1, *[1] * (xx.ndim - 1)) ** 2 * gm.score(xx, sigma, wide)

        ref = sdekit.log_likelihood(model, x, prior_log_prob=exact_prior, rtol=1e-9, atol=1e-9)
        gap = sde.prior_log_prob(ref.z) - exact_prior(ref.z)  # k-diffusion's prior minus the exact p_T

        methods = {}
        for method, tol in exact_configs:
            methods[f"sdekit exact ({method}, rtol=atol={tol:g})"] = (
                lambda method=method, tol=tol: _ours(model, x, exact_prior, divergence="exact", method=method,
                                                     rtol=tol, atol=tol))
        for qtol, tol in quad_configs:
            methods[f"sdekit exact, quadrature (quad_tol={qtol:g}, rtol=atol={tol:g})"] = (
                lambda qtol=qtol, tol=tol: _ours(model, x, exact_prior, divergence="exact", integrate="quadrature",
                                                 quad_tol=qtol, rtol=tol, atol=tol))
        methods["sdekit hutchinson, 1 probe (dopri5, 1e-4)"] = (
            lambda: _ours(model, x, exact_prior, divergence="hutchinson", probes=1, rtol=1e-4, atol=1e-4))
        if kds is not None:
            methods["k-diffusion log_likelihood (default: 1 probe, 1e-4)"] = (
                lambda: _kdiff(kds, denoiser, x, smin, smax, gap))
        methods["score_sde-style (scipy RK45, 1 probe, 1e-5)"] = (
            lambda: scoresde_style_log_likelihood(model, x, smin, smax, exact_prior, seed=seed))

        costs[dim] = evaluation_costs(model, x, repeats=max(20, 10 * repeats))
        print(f"{dim:>4}  per-evaluation cost (ms, batch {n}): " + ", ".join(f"{k} {v:.3f}" for k, v in costs[dim].items()))
        times = {name: [] for name in methods}
        results = {}
        for name, fn in methods.items():  # warm-up (vmap / autograd initialisation, imports)
            results[name] = fn()
        for _ in range(repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - start)
        for name in methods:
            est, nfe, *extra = results[name]
            err = (est - truth).abs()
            row = {"dim": dim, "method": name, "n": n, "mae_nats": err.mean().item(), "max_err_nats": err.max().item(),
                   "nfe": int(nfe), "time_s": statistics.median(times[name]), "times_s": times[name]}
            row.update(*extra)
            if name.startswith("k-diffusion"):
                raw = (est + gap - truth).abs()
                row["mae_nats_raw_prior"] = raw.mean().item()
                row["prior_gap_mean_nats"] = gap.mean().item()
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows, costs, kd_note


def evaluation_costs(model, x, repeats):
    """Median wall time (ms) of one probability-flow drift evaluation on the whole batch at t = 1: alone,
    with one vector-Jacobian product (a one-probe Hutchinson evaluation) and with the exact trace (D
    products, one vectorised backward pass) -- what each method pays per NFE, before solver overhead."""
    from sdekit.likelihood import AugmentedTerm, Drift

    t = torch.tensor(1.0, dtype=torch.float64)
    probe = torch.ones(1, *x.shape, dtype=x.dtype)
    drift = Drift(model)
    exact = AugmentedTerm(drift, x.shape, "exact", None, "autograd", None, (0.0, float(model.sde.T)))
    hutch = AugmentedTerm(drift, x.shape, "hutchinson", probe, "autograd", None, (0.0, float(model.sde.T)))
    calls = {"forward": lambda: drift(x, t), "one_probe": lambda: hutch.divergence_at(x, t),
             "exact_trace": lambda: exact.divergence_at(x, t)}
    out = {}
    for name, fn in calls.items():
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        out[name] = statistics.median(samples)
    return out


def _ours(model, x, prior, **kw):
    res = sdekit.log_likelihood(model, x, prior_log_prob=prior, seed=0, **kw)
    if "divergence_evals_per_row" in res.stats:
        return res.log_prob, res.nfe, {"divergence_evals_per_row": res.stats["divergence_evals_per_row"]}
    return res.log_prob, res.nfe


def _kdiff(kds, denoiser, x, smin, smax, gap):
    ll, info = kds.log_likelihood(denoiser, x, smin, smax)
    return ll - gap, info["fevals"]  # gap-corrected (see the module docstring)


def _fmt(row):
    return (f"{row['dim']:>4}  {row['method']:<56} {row['mae_nats']:>10.2e} {row['max_err_nats']:>10.2e} "
            f"{row['nfe']:>6} {row['time_s']:>9.3f}")


def table(rows):
    head = f"{'D':>4}  {'method':<56} {'MAE nats':>10} {'max err':>10} {'NFE':>6} {'time s':>9}"
    return "\n".join([head, "-" * len(head)] + [_fmt(r) for r in rows])


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["dim"] for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(6 * len(dims), 4.5), squeeze=False)
    markers = "os^Dv<>PX"
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, dim in zip(axes[0], dims):
        for i, m in enumerate(methods):
            r = [r for r in rows if r["dim"] == dim and r["method"] == m]
            if r:
                ax.scatter(r[0]["time_s"], r[0]["mae_nats"], marker=markers[i % len(markers)], s=60, label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1e-3, color="gray", lw=0.8, ls="--")
        ax.set_xlabel(f"wall time for {rows[0]['n']} points (s)")
        ax.set_ylabel("mean |log p estimate - exact| (nats)")
        ax.set_title(f"Gaussian mixture, D = {dim}, EDM sigma in [0.002, 80]")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="2,16")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact", default="dopri5:1e-5,dopri5:1e-4,dopri8:1e-3",
                   help="sdekit exact-divergence configurations, method:tol (1e-5 is the default call)")
    p.add_argument("--quadrature", default="0.1:1e-5,0.1:1e-4",
                   help="sdekit integrate='quadrature' configurations, quad_tol:tol ('' for none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every method (default 1)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true",
                   help="50 points, dopri5 at 1e-5 and 1e-4 and quadrature at 1e-5 only (a before/after check)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.exact, args.quadrature = min(args.n, 50), "dopri5:1e-5,dopri5:1e-4", "0.1:1e-5"
    dims = [int(d) for d in args.dims.split(",")]
    configs = [(c.split(":")[0], float(c.split(":")[1])) for c in args.exact.split(",") if c]
    quads = [(float(c.split(":")[0]), float(c.split(":")[1])) for c in args.quadrature.split(",") if c]
    rows, costs, note = run(dims, args.n, args.repeats, args.seed, configs, quads, args.threads)
    print()
    print(table(rows))
    os.makedirs(args.out, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "dtype": "float64",
            "sde": "EDMSDE(sigma_min=0.002, sigma_max=80)", "note": note}
    try:
        import torchdiffeq

        meta["torchdiffeq"] = torchdiffeq.__version__
    except ImportError:
        pass
    write_report(args.out, "likelihood", {"meta": meta, "rows": rows, "evaluation_costs_ms": costs},
                 lambda path: plot(rows, path))


if __name__ == "__main__":
    main()
