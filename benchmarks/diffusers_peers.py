"""diffusers' deterministic schedulers on a DDPM table with an exact mixture eps (used by accuracy_vs_nfe.py).

Every scheduler is built on the same table (1000 steps, linear betas 1e-4..0.02, epsilon prediction,
no clipping or thresholding) and driven by the loop every diffusers pipeline runs:

    y = x_T * init_noise_sigma
    for t in scheduler.timesteps:
        y_in = scheduler.scale_model_input(y, t);  eps = model(y_in, t);  y = scheduler.step(eps, t, y).prev_sample

so NFE = len(scheduler.timesteps) (the calls are also counted). The model is the exact eps of the
mixture at the noise level the scheduler itself uses for that call (not at a rounded timestep):
  * schedulers that scale their input (Euler, Heun, LMS, KDPM2): alpha = <y_in, y> / <y, y>, i.e.
    exactly 1 / sqrt(1 + sigma^2) of the sigma they used;
  * multistep / singlestep exponential solvers (DPMSolver*, UniPC, DEIS): sigmas[step_index]
    (Karras / exponential / beta / Lu sigmas included, whose timesteps are rounded);
  * IPNDM: its own (alphas, betas)[step_index] (a VP pair, alpha^2 + beta^2 = 1);
  * DDIM, PNDM: alphas_cumprod[timestep] (integer timesteps).
Each run's endpoint is read from the scheduler (sigmas[-1], final_alpha_cumprod, or IPNDM's last
beta) and measured against the reference at that level: t_end = step 0 of the table, sigma = 0, or
any other level carried from t_end. diffusers keeps its tables in float32 and Euler steps in float32;
that floor (~1e-7 relative) is far below every error reported here.
"""
from __future__ import annotations

import itertools
import math
import time
import warnings

import torch

TABLE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
         "prediction_type": "epsilon"}
SPACINGS = ("linspace", "leading", "trailing")
ALT_SIGMAS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


def version() -> str:
    import diffusers

    return diffusers.__version__


def _params(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _sigma_options(cls):
    """Timestep spacings (where offered) and the alternative sigma schedules each scheduler offers."""
    p = _params(cls)
    opts = [({"timestep_spacing": s}, s) for s in SPACINGS] if "timestep_spacing" in p else [({}, "default")]
    for alt in ALT_SIGMAS:
        if alt in p:
            extra = {"timestep_spacing": "linspace"} if "timestep_spacing" in p else {}
            opts.append(({alt: True, **extra}, alt.replace("use_", "").replace("_sigmas", "").replace("_lambdas", "_lambdas")))
    return opts


def _finals(cls):
    return [({"final_sigmas_type": f}, f) for f in ("zero", "sigma_min")] if "final_sigmas_type" in _params(cls) else [({}, None)]


def configs(quick: bool = False):
    """(label, scheduler class, kwargs) for every deterministic setting benchmarked."""
    import diffusers as d

    out = []

    def add(cls_name, label, **kw):
        cls = getattr(d, cls_name, None)
        if cls is None:
            return
        kw = {k: v for k, v in kw.items() if k in _params(cls)}
        out.append((label, cls, kw))

    def product(cls_name, base_label, variants):
        cls = getattr(d, cls_name, None)
        if cls is None:
            return
        for (skw, slab), (fkw, flab), (vkw, vlab) in itertools.product(_sigma_options(cls), _finals(cls), variants):
            label = ",".join(x for x in (base_label + vlab, slab, flab) if x)
            add(cls_name, label, **TABLE, **vkw, **skw, **fkw)

    for spacing, one in itertools.product(SPACINGS, (True, False)):
        add("DDIMScheduler", f"DDIM,{spacing},alpha_to_one={one}", **TABLE, clip_sample=False, set_alpha_to_one=one,
            timestep_spacing=spacing)
    for spacing, prk, one in itertools.product(SPACINGS, (True, False), (True, False)):
        add("PNDMScheduler", f"PNDM{'(PLMS)' if prk else '(PRK+PLMS)'},{spacing},alpha_to_one={one}", **TABLE,
            skip_prk_steps=prk, set_alpha_to_one=one, timestep_spacing=spacing)
    product("DPMSolverMultistepScheduler", "DPMSolverMultistep",
            [({"solver_order": o, "algorithm_type": a, "solver_type": st}, f"{o}M[{a},{st}]")
             for o in (2, 3) for a in ("dpmsolver++", "dpmsolver") for st in ("midpoint", "heun")])
    product("DPMSolverSinglestepScheduler", "DPMSolverSinglestep",
            [({"solver_order": o, "algorithm_type": a}, f"{o}S[{a}]") for o in (2, 3) for a in ("dpmsolver++", "dpmsolver")])
    product("UniPCMultistepScheduler", "UniPC",
            [({"solver_order": o, "solver_type": st}, f"[{st},order {o}]") for st in ("bh1", "bh2") for o in (2, 3)])
    product("DEISMultistepScheduler", "DEIS", [({"solver_order": o}, f"[order {o}]") for o in (2, 3)])
    product("EulerDiscreteScheduler", "Euler",
            [({"interpolation_type": it}, "" if it == "linear" else "[log_linear]") for it in ("linear", "log_linear")])
    product("HeunDiscreteScheduler", "Heun", [({}, "")])
    product("LMSDiscreteScheduler", "LMS", [({}, "")])
    product("KDPM2DiscreteScheduler", "KDPM2", [({}, "")])
    if getattr(d, "IPNDMScheduler", None) is not None:
        out.append(("IPNDM,own sin-schedule", d.IPNDMScheduler, {"num_train_timesteps": 1000}))
        out.append(("IPNDM,table-linspace", d.IPNDMScheduler, {"num_train_timesteps": 1000, "_table_grid": True}))
    # drop duplicate alternatives: log_linear interpolation only matters for the spacing grids
    seen, unique = set(), []
    for label, cls, kw in out:
        key = (cls.__name__, tuple(sorted(kw.items())))
        if key in seen or ("log_linear" in label and any(a in label for a in ("karras", "exponential", "beta"))):
            continue
        seen.add(key)
        unique.append((label, cls, kw))
    if quick:  # one representative per scheduler class and all spacings of the defaults
        keep = []
        for label, cls, kw in unique:
            if cls.__name__ in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSinglestepScheduler"):
                if ("midpoint" in label or "bh2" in label or "Singlestep" in label) and "zero" in label and \
                        ("dpmsolver++" in label or "UniPC" in label) and "order 3" not in label and "3M" not in label \
                        and "3S" not in label:
                    keep.append((label, cls, kw))
            else:
                keep.append((label, cls, kw))
        unique = keep
    return unique


def _build(cls, kw, steps, table_abar):
    kw = dict(kw)
    table_grid = kw.pop("_table_grid", False)
    if table_grid:  # IPNDM on the table: VP sigmas at linspace timesteps of the table, ending at 0
        idx = torch.linspace(len(table_abar) - 1, 0, steps).round().long()
        betas = torch.cat([torch.sqrt(1 - table_abar[idx]), torch.zeros(1, dtype=torch.float64)])
        kw["trained_betas"] = betas.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = cls(**kw)
        sched.set_timesteps(steps)
    return sched


def _nfe_table(cls, kw, max_steps, table_abar):
    """{steps: len(timesteps)} for steps 1..max_steps (None where set_timesteps refuses), from one instance
    (IPNDM on the table needs its grid per step count, so it is rebuilt)."""
    out = {}
    sched = None
    for k in range(1, max_steps + 1):
        try:
            if sched is None or kw.get("_table_grid"):
                sched = _build(cls, kw, k, table_abar)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sched.set_timesteps(k)
            out[k] = len(sched.timesteps)
        except Exception:
            out[k] = None
    return out


def _level(sched, y, y_in, timestep, kind):
    """(alpha, sigma) of the VP marginal at which the scheduler evaluates the model in this call."""
    if kind == "ipndm":
        i = sched.step_index or 0
        return float(sched.alphas[i]), float(sched.betas[i])
    if kind == "scaled":
        a = float((y_in * y).sum() / (y * y).sum())
        return a, math.sqrt(max(0.0, 1 - a * a))
    if kind == "sigmas":
        i = sched.step_index if sched.step_index is not None else 0
        s = float(sched.sigmas[i])
        a = 1.0 / math.sqrt(1.0 + s * s)
        return a, s * a
    abar = float(sched.alphas_cumprod[int(timestep)])
    return math.sqrt(abar), math.sqrt(1 - abar)


def _kind(sched):
    name = type(sched).__name__
    if name == "IPNDMScheduler":
        return "ipndm"
    if float(sched.init_noise_sigma) != 1.0:
        return "scaled"
    if name in ("DDIMScheduler", "PNDMScheduler") or not hasattr(sched, "sigmas"):
        return "table"
    return "sigmas"


def _end_level(sched, kind):
    """VE noise level s = sigma / alpha where the run ends (0 for a final jump to the data)."""
    if kind == "ipndm":
        b = float(sched.betas[-1])
        return b / math.sqrt(max(1e-300, 1 - b * b))
    if kind == "table":
        abar = float(sched.final_alpha_cumprod)
        return math.sqrt(max(0.0, (1 - abar) / abar))
    return float(sched.sigmas[-1])


def run_one(cls, kw, steps, gm, x_T, table_abar, mixture_score):
    sched = _build(cls, kw, steps, table_abar)
    kind = _kind(sched)
    calls = [0]
    y = x_T * float(sched.init_noise_sigma)
    for t in sched.timesteps:
        y_in = sched.scale_model_input(y, t)
        a, s = _level(sched, y, y_in, t, kind)
        calls[0] += 1
        eps = (-s * mixture_score(gm, y_in, a, s)).reshape(y.shape).to(y.dtype)
        y = sched.step(eps, t, y).prev_sample
    s_end = _end_level(sched, kind)
    x = y / math.sqrt(1 + s_end**2) if kind == "scaled" else y
    return x.to(torch.float64), calls[0], len(sched.timesteps), s_end, kind


def run_all(gm, sde, x_T, refs, budgets, log, *, mixture_score, carry, row_errors, summarize, quick=False):
    """Every config x steps per budget; returns rows like the other libraries'."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # its notes on changed settings go to the report instead
    table_abar = sde.alphas_cumprod.to(torch.float64)
    s_eps = math.sqrt((1 - float(table_abar[0])) / float(table_abar[0]))
    carried = {}
    rows, t_all = [], time.perf_counter()
    cfgs = configs(quick)
    for label, cls, kw in cfgs:
        try:
            _build(cls, kw, max(budgets), table_abar)
        except Exception as err:  # a setting diffusers refuses: recorded, not run
            rows.append({"library": "diffusers", "solver": label, "grid": kw.get("timestep_spacing", "-"), "steps": None,
                         "nfe": 0, "median": float("nan"), "p90": float("nan"), "rms": float("nan"), "time_s": 0.0,
                         "unsupported": f"{type(err).__name__}: {err}"[:200]})
            continue
        nfe_of = _nfe_table(cls, kw, max(budgets) + 1, table_abar)
        plan = set()
        for b in budgets:
            fit = [k for k, n in nfe_of.items() if n is not None and n <= b]
            if fit:
                plan.add(max(fit))
        for steps in sorted(plan):
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x, calls, n_ts, s_end, kind = run_one(cls, kw, steps, gm, x_T, table_abar, mixture_score)
                if s_end == 0.0:
                    ref, endpoint = refs["zero"], "sigma=0"
                elif abs(s_end / s_eps - 1) < 1e-4:
                    ref, endpoint = refs["eps"], "t_end"
                else:
                    key = round(s_end, 9)
                    if key not in carried:
                        carried[key] = carry(gm, refs["eps"], s_eps, s_end, 200)
                    ref, endpoint = carried[key], f"s={s_end:.4g}"
                st = summarize(row_errors(x, ref))
                rows.append({"library": "diffusers", "solver": label, "grid": kw.get("timestep_spacing", "-"),
                             "steps": steps, "nfe": calls, **st, "endpoint": endpoint, "time_s": time.perf_counter() - t0,
                             **({"nfe_mismatch": n_ts} if n_ts != calls else {})})
            except Exception as err:  # a scheduler that fails is a result
                rows.append({"library": "diffusers", "solver": label, "grid": kw.get("timestep_spacing", "-"),
                             "steps": steps, "nfe": nfe_of.get(steps) or steps, "median": float("nan"),
                             "p90": float("nan"), "rms": float("nan"), "time_s": time.perf_counter() - t0,
                             "failed": f"{type(err).__name__}: {err}"[:200]})
    failed = [r for r in rows if "failed" in r]
    refused = sorted({r["solver"] for r in rows if "unsupported" in r})
    rows_run = [r for r in rows if "unsupported" not in r]
    log(f"    diffusers: {len(cfgs)} settings ({len(refused)} refused by diffusers, e.g. "
        f"{next((r['unsupported'] for r in rows if 'unsupported' in r), '-')[:90]}), {len(rows_run)} runs, {len(failed)} failed "
        f"({time.perf_counter() - t_all:.0f} s)")
    for r in failed[:10]:
        log(f"      failed: {r['solver']} steps {r['steps']}: {r['failed']}")
    return rows
