"""Training by denoising score matching: AdamW, gradient clipping, EMA, exact resume.

``Trainer`` owns everything that determines the run: the network, AdamW, the EMA weights, one
``torch.Generator`` drawing batches, times, noise and label dropout, and torch's global RNG (used by
dropout). A checkpoint (``sdekit.checkpoint``) stores all of it, so
    train 2N steps  ==  train N, save, load (Trainer.resume), train N
bit for bit on the same machine. Checkpoints are committed as a whole (``sdekit.checkpoint``): a
failure or signal during a save leaves the previous one loadable. A trainer refuses to replace a
checkpoint it did not resume from or write itself unless ``overwrite=True``, and everything a save
stores is validated before the first step. The step is:
    idx ~ U{0..len-1}^B;  y -> null class with probability p_uncond (classifier-free guidance);
    loss = dsm_loss(model, x[idx], weighting, y);  clip ||grad|| to grad_clip;  AdamW with
    lr * min(1, (step + 1) / warmup);  ema <- d ema + (1 - d) w, d = min(ema_decay, (1 + step)/(10 + step)).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional, cast

import torch

from .checkpoint import (ANY, LOSS_PLOT_NAME, WEIGHT_FILES, TrainingState, build_checkpoint,
                         check_config_serialisable, check_replaces, checkpoint_id, claim, commit_checkpoint,
                         load_state_strict, read_checkpoint, read_training_state, sde_from_spec, sde_to_spec,
                         training_state_tensors)
from .distributed import world
from .loss_plot import loss_plot_png, plot_losses
from .losses import dsm_loss
from .parameterization import ScoreModel, check_prediction
from .sde import LinearSDE
from .train_config import TRAIN_SETTINGS, TrainConfig
from .validate import INT64, integer

Tensor = torch.Tensor

__all__ = ["Trainer", "TrainConfig", "TRAIN_SETTINGS", "TrainingInterrupted", "train", "plot_losses"]

class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM between two steps, after the checkpoint (if any) was saved.
    ``signum``: the signal; ``step``: the steps done; ``out_dir``: where the checkpoint is (or None)."""

    def __init__(self, signum: int, step: int, out_dir=None):
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"training interrupted by {name} after step {step}"
                         + (f"; checkpoint saved in {out_dir}, resume to continue" if out_dir is not None else ""))
        self.signum, self.step, self.out_dir = signum, step, out_dir


def data_fingerprint(data: Optional[Tensor]) -> Optional[str]:
    """sha256 of a tensor's shape, dtype and bytes (None for None): a checkpoint records that of its training
    data and labels, and a resume on other data is refused instead of silently training on it."""
    if data is None:
        return None
    t = data.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)} {t.dtype};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _seed_word(v: int) -> int:
    """A derived seed torch accepts: as is inside [-2^63, 2^64), else reduced mod 2^64."""
    return v if INT64[0] <= v < 2**64 else v % 2**64


@contextlib.contextmanager
def _interrupts() -> Iterator[list]:
    """Collect SIGINT/SIGTERM into a list instead of raising mid-step (main thread only)."""
    caught: list = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    """Denoising score-matching trainer for ``net`` under ``sde`` with a given prediction type.

    Construction seeds torch's global RNG with ``seed`` (dropout draws from it) and ``resume``
    restores it: training owns the process's RNG, as any exactly-resumable trainer must.

    data: (N, *event_shape) tensor; y: optional (N,) integer labels (used only if the net has
    class conditioning; then each label is replaced by the null class with probability p_uncond).
    """

    def __init__(self, net: torch.nn.Module, sde: LinearSDE, data: Tensor, prediction: str = "eps",
                 config: Optional[TrainConfig] = None, *, y: Optional[Tensor] = None, meta: Optional[dict] = None,
                 overwrite: bool = False, **settings):
        check_prediction(prediction)
        cfg = self.config = TrainConfig.make(config, **settings)
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (N, *event_shape) with N >= 1; got {tuple(data.shape)}")
        if y is not None and y.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape (N,) = ({data.shape[0]},); got {tuple(y.shape)}")
        self.net, self.sde, self.prediction = net, sde, prediction
        self.data = data
        self.net_conditional = getattr(net, "num_classes", None) is not None
        self.conditional = self.net_conditional and y is not None
        self.y = y
        self.meta = dict(meta or {})
        self._fingerprints: Optional[tuple] = None  # data_fingerprint of data and y, computed on first use
        self.overwrite = bool(overwrite)
        self._ckpt_ids: dict = {}  # real path -> id of the checkpoint this trainer resumed from or last wrote
        self.model = ScoreModel(net, sde, prediction)
        self.rank, self.world = world()
        self._train_model = self.model
        if self.world > 1:
            # DistributedDataParallel: parameters broadcast from rank 0, gradients averaged over ranks.
            # Every rank draws the same global batch indices from the shared generator and trains on its
            # slice idx[rank::world]; noise, times and dropout come from per-rank streams.
            from torch.nn.parallel import DistributedDataParallel

            self._train_model = ScoreModel(DistributedDataParallel(net), sde, prediction)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.noise_generator = self.generator if self.world == 1 else \
            torch.Generator().manual_seed(_seed_word(cfg.seed * 1_000_003 + self.rank))
        torch.manual_seed(_seed_word(cfg.seed + self.rank))  # dropout draws from torch's global RNG
        self.step_count = 0
        self.losses: list[float] = []
        self.seconds = 0.0

    @property
    def hparams(self) -> dict:
        """The settings as a checkpoint stores them (``TrainConfig.to_dict``)."""
        return self.config.to_dict()

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> float:
        h = self.config
        self.net.train()
        n = self.data.shape[0]
        idx = torch.randint(0, n, (h.batch_size,), generator=self.generator)
        x0 = self.data[idx]
        y = None
        if self.conditional:
            assert self.y is not None  # conditional needs labels
            y = self.y[idx].clone()
            drop = torch.rand(y.shape, generator=self.generator) < h.p_uncond
            y[drop] = cast(int, self.net.null_class)  # a plain int attribute of the class-conditional nets
        if self.world > 1:
            x0 = x0[self.rank::self.world]
            y = None if y is None else y[self.rank::self.world]
        lr = h.lr * (min(1.0, (self.step_count + 1) / h.warmup) if h.warmup > 0 else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = dsm_loss(self._train_model, x0, h.weighting, y=y, generator=self.noise_generator,
                        importance=h.importance, gamma=h.gamma, time_sampling=h.time_sampling)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if h.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), h.grad_clip)
        self.optimizer.step()
        d = min(h.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.ema[k].mul_(d).add_(v, alpha=1 - d)
                else:
                    self.ema[k].copy_(v)
        self.step_count += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def run(self, steps: int, progress: bool = True, out_dir=None, ckpt_every: Optional[int] = None,
            desc: str = "train") -> list[float]:
        """Train ``steps`` more steps, with a tqdm bar showing the running loss; checkpoint every
        ``ckpt_every`` steps and at the end when ``out_dir`` is given; a live run already writing to
        ``out_dir`` is refused (``sdekit.checkpoint.DirectoryClaimed``) before the first step."""
        steps = integer("steps", steps, 0)
        if ckpt_every is not None:
            ckpt_every = integer("ckpt_every", ckpt_every, 1)
        if out_dir is not None:
            self.check_can_save(out_dir)  # before the first step, not after the last
        # one run per checkpoint directory: a second trainer writing there is refused now (checkpoint.claim)
        held = claim(out_dir) if out_dir is not None and self.rank == 0 else contextlib.nullcontext()
        with held:
            if out_dir is not None:
                self.check_can_save(out_dir)  # again under the claim: a run that ended meanwhile may have saved
            return self._run(steps, progress, out_dir, ckpt_every, desc)

    def _run(self, steps: int, progress: bool, out_dir, ckpt_every: Optional[int], desc: str) -> list[float]:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        bar = tqdm(range(steps), desc=desc, disable=not progress or self.rank != 0, dynamic_ncols=True)
        avg = None
        # SIGINT/SIGTERM end the run between two steps, never inside one, and wait for the final save
        with _interrupts() as stop:
            for _ in bar:
                value = self.step()
                avg = value if avg is None else 0.98 * avg + 0.02 * value
                bar.set_postfix(loss=f"{avg:.4f}", refresh=False)
                if out_dir is not None and ckpt_every and self.step_count % ckpt_every == 0:
                    self.seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save(out_dir)
                if stop:
                    break
            bar.close()
            self.seconds += time.perf_counter() - start
            if out_dir is not None:
                self.save(out_dir)
        if stop:
            raise TrainingInterrupted(stop[0], self.step_count, out_dir)
        return self.losses[-steps:] if steps else []

    # -- models --------------------------------------------------------------------------------
    def ema_model(self) -> ScoreModel:
        """A ScoreModel on a copy of the net carrying the EMA weights (eval mode)."""
        from .nets import build_net

        net = build_net(cast(dict, self.net.config))  # sdekit nets keep their build config
        net.load_state_dict(self.ema)
        return ScoreModel(net.eval(), self.sde, self.prediction)

    # -- checkpoints ---------------------------------------------------------------------------
    def _state_tensors(self, rank_states: Optional[list] = None) -> dict:
        state = TrainingState(optimizer=self.optimizer.state_dict()["state"], rng_trainer=self.generator.get_state(),
                              rng_torch=torch.get_rng_state(), ranks=list(rank_states or []), losses=self.losses)
        return training_state_tensors(state)

    def save(self, out_dir) -> Path:
        """Write the checkpoint directory (weights, EMA, optimizer, RNG states, loss history) and the
        loss-curve PNG ``loss.png`` beside it. Under torch.distributed only rank 0 writes (the weights are
        the same on every rank) after gathering every rank's noise and dropout RNG states, so a resume on
        the same number of ranks continues exactly. Under torch.distributed every rank must call save."""
        if self.world == 1:
            return self._write(out_dir)
        import torch.distributed as dist

        rank_states = [None] * self.world
        dist.all_gather_object(rank_states, (self.noise_generator.get_state(), torch.get_rng_state()))
        path = self._write(out_dir, rank_states) if self.rank == 0 else Path(out_dir)
        dist.barrier()  # no rank goes on (and, say, resumes) before the files exist
        return path

    def _extra(self) -> dict:
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                  for g in self.optimizer.state_dict()["param_groups"]]
        last = self.losses[-1] if self.losses else None
        return {"train": {**self.hparams, "steps_done": self.step_count, "data_sha256": self.fingerprints[0],
                          "labels_sha256": self.fingerprints[1],
                          "seconds": self.seconds if math.isfinite(self.seconds) else None,
                          "last_loss": last if last is not None and math.isfinite(last) else None,
                          "optimizer": {"type": "AdamW", "param_groups": groups}},
                "data": self.meta}

    @property
    def fingerprints(self) -> tuple:
        """(``data_fingerprint`` of the data, of the labels): what a checkpoint records."""
        if self._fingerprints is None:
            self._fingerprints = (data_fingerprint(self.data), data_fingerprint(self.y))
        return self._fingerprints

    def _replaces(self, out_dir):
        """What a save to out_dir may replace: the checkpoint this trainer resumed from or last wrote
        there; with overwrite=True, any; else only nothing."""
        key = os.path.realpath(out_dir)
        if key in self._ckpt_ids:
            return self._ckpt_ids[key]
        return ANY if self.overwrite else None

    def check_can_save(self, out_dir) -> None:
        """Raise ValueError now if saving to out_dir would fail: a setting JSON cannot store (NaN, inf),
        or a checkpoint there that this trainer may not replace (``CheckpointConflict``)."""
        check_config_serialisable(self.net, self.sde, self.prediction, self._extra())
        replaces = self._replaces(out_dir)
        if replaces == ANY or self.rank != 0:
            return
        check_replaces(out_dir, replaces, checkpoint_id(out_dir))

    def _write(self, out_dir, rank_states: Optional[list] = None) -> Path:
        files = {LOSS_PLOT_NAME: loss_plot_png(self.losses)} if self.losses else None
        payload = build_checkpoint(self.net, self.sde, self.prediction, self.step_count, ema=self.ema,
                                   state=self._state_tensors(rank_states), extra=self._extra(), files=files)
        self._ckpt_ids[os.path.realpath(out_dir)] = commit_checkpoint(out_dir, payload, self._replaces(out_dir))
        return Path(out_dir)

    @classmethod
    def resume(cls, path, data: Tensor, y: Optional[Tensor] = None, check_data: bool = True) -> "Trainer":
        """Rebuild a trainer from a checkpoint directory so training continues exactly.

        data, y: the training set, which must be the checkpoint's: its ``data_fingerprint`` is compared with the
        one recorded (checkpoints written before it was recorded are not checked); other data is refused with
        ValueError unless ``check_data=False`` (continue the run, optimizer included, on new data)."""
        from .nets import build_net

        path = Path(path)
        ckpt_id = checkpoint_id(path)
        config, model_t, ema_t, state_t = read_checkpoint(path)
        if checkpoint_id(path) != ckpt_id:
            raise ValueError(f"the checkpoint in {path} was replaced while it was being read; try again")
        if "train" not in config or state_t is None or ema_t is None:
            raise ValueError(f"checkpoint {path} holds no training state (config 'train', ema and state files); "
                             "it can be loaded with load_model but not resumed")
        try:
            net, sde = build_net(config["net"]), sde_from_spec(config["sde"])
            settings = TrainConfig.from_stored(config["train"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint file {path / 'config.json'}: {e}") from None
        load_state_strict(net, model_t, path / WEIGHT_FILES["model"])
        self = cls(net, sde, data, config["prediction"], settings, y=y, meta=config.get("data"))
        if check_data:
            self._check_resumed_data(path, config)
        load_state_strict(_Holder(self.ema), ema_t, path / WEIGHT_FILES["ema"])
        self.ema = {k: v.clone() for k, v in ema_t.items()}
        state = read_training_state(state_t, path / WEIGHT_FILES["state"])
        self._restore_optimizer(config["train"], state, path)
        self._restore_rng(state, path)
        self.losses = state.losses
        self.step_count = int(config["step"])
        self.seconds = float(config["train"].get("seconds") or 0.0)
        self._ckpt_ids[os.path.realpath(path)] = ckpt_id
        return self

    def _check_resumed_data(self, path: Path, config: dict) -> None:
        """ValueError when the data (or, for a class-conditional net, the labels) differ from the fingerprints the
        checkpoint recorded."""
        checks = [("data", "data_sha256", 0)] + ([("labels", "labels_sha256", 1)] if self.net_conditional else [])
        for what, key, i in checks:
            if key in config["train"] and config["train"][key] != self.fingerprints[i]:
                raise ValueError(f"resuming {path} on {what} that differ from its training set (given: data of shape "
                                 f"{tuple(self.data.shape)}, {'with' if self.y is not None else 'no'} labels; the "
                                 f"checkpoint records {config.get('data')}): rebuild the same data and labels (same "
                                 "set, size and seed), or pass check_data=False to continue on new data")

    def _restore_optimizer(self, train_cfg: dict, state: TrainingState, path: Path) -> None:
        """AdamW's hyper-parameters from the config's JSON, its moments from the decoded state."""
        opt = self.optimizer.state_dict()
        groups = train_cfg["optimizer"]["param_groups"]
        if len(groups) != len(opt["param_groups"]):
            raise ValueError(f"checkpoint file {path / 'config.json'}: {len(groups)} optimizer groups, expected "
                             f"{len(opt['param_groups'])}")
        for g, saved in zip(opt["param_groups"], groups):
            g.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items()})
        params = list(self.net.parameters())
        if state.optimizer and (max(state.optimizer) >= len(params) or any(
                s.get("exp_avg") is not None and s["exp_avg"].shape != p.shape
                for i, p in enumerate(params) for s in [state.optimizer.get(i, {})])):
            raise ValueError(f"checkpoint file {path / WEIGHT_FILES['state']}: optimizer state does not match the network")
        opt["state"] = state.optimizer
        self.optimizer.load_state_dict(opt)

    def _restore_rng(self, state: TrainingState, path: Path) -> None:
        """The trainer's, torch's and (on the same number of ranks) this rank's RNG states."""
        file = path / WEIGHT_FILES["state"]
        saved_world = max(1, len(state.ranks))
        if saved_world != self.world and self.world > 1:
            raise ValueError(f"checkpoint file {file} was written by {saved_world} rank(s) and is resumed on "
                             f"{self.world}; resume on the same number of ranks")
        if saved_world != self.world:
            warnings.warn(f"{path} was written by {saved_world} ranks and resumes in one process: training "
                          "goes on from its weights and optimizer, but not bit for bit as on those ranks", stacklevel=3)
        try:
            self.generator.set_state(state.rng_trainer)
            torch.set_rng_state(state.rng_torch)
            if self.world > 1:
                self.noise_generator.set_state(state.ranks[self.rank][0])
                torch.set_rng_state(state.ranks[self.rank][1])
        except RuntimeError as e:
            raise ValueError(f"checkpoint file {file}: bad RNG state ({e})") from None

    def resume_conflicts(self, net=None, sde=None, prediction=None, meta=None, **hparams) -> list:
        """The settings given for a resumed run that differ from this (resumed) trainer's, as
        "name: checkpoint X, given Y" lines; None means "not given". ``meta`` (the data's description)
        conflicts on any key both record with different values."""
        diffs = []
        for k, v in sorted((meta or {}).items()):
            if k in self.meta and self.meta[k] != v:
                diffs.append(f"data {k}: checkpoint {self.meta[k]!r}, given {v!r}")
        if prediction is not None and prediction != self.prediction:
            diffs.append(f"prediction: checkpoint {self.prediction!r}, given {prediction!r}")
        if sde is not None:
            stored = sde_to_spec(self.sde)
            try:
                given = sde_to_spec(sde)
            except ValueError:
                given = {"name": type(sde).__name__}
            if given != stored:
                diffs.append(f"sde: checkpoint {stored['name']}({stored['kwargs']}), given {given['name']}"
                             + (f"({given['kwargs']})" if "kwargs" in given else ""))
        if net is not None and getattr(net, "config", None) != self.net.config:
            diffs.append(f"net: checkpoint {self.net.config}, given {getattr(net, 'config', type(net).__name__)}")
        asked = TrainConfig.make(self.config, **hparams)
        for k in sorted(hparams, key=TRAIN_SETTINGS.index):
            if getattr(asked, k) != getattr(self.config, k):
                diffs.append(f"{k}: checkpoint {getattr(self.config, k)!r}, given {getattr(asked, k)!r}")
        return diffs


class _Holder(torch.nn.Module):
    """Lets load_state_strict check a plain dict of tensors (the EMA) key by key."""

    def __init__(self, tensors: dict):
        super().__init__()
        self._t = tensors

    def state_dict(self, *a, **k):
        return self._t

    def load_state_dict(self, tensors, *a, **k):
        pass


def train(net: Optional[torch.nn.Module], sde: Optional[LinearSDE], data: Tensor, prediction: Optional[str] = None,
          steps: int = 1000,
          out_dir=None, resume: bool = False, y: Optional[Tensor] = None, progress: bool = True,
          ckpt_every: Optional[int] = None, overwrite: bool = False, check_data: bool = True, **hparams) -> Trainer:
    """Train until ``steps`` total steps. With ``resume=True`` and a checkpoint in ``out_dir``,
    continue it: net/sde/prediction/hparams then come from the checkpoint (``net``, ``sde`` may be
    None), and any of them given with a different value is refused (ValueError naming each).
    Otherwise a new run (prediction defaults to "eps"), which refuses to replace a checkpoint in
    ``out_dir`` unless ``overwrite=True``. Writes the checkpoint and loss.png to ``out_dir`` when
    given. A resume checks that ``data``/``y`` are the checkpoint's training set (``Trainer.resume``,
    ``check_data``) and that ``meta`` agrees with the data description it recorded. Returns the Trainer."""
    steps = integer("steps", steps, 0)
    if ckpt_every is not None:
        integer("ckpt_every", ckpt_every, 1)
    if resume and out_dir is not None and checkpoint_id(out_dir) is not None:
        trainer = Trainer.resume(out_dir, data, y=y, check_data=check_data)
        diffs = trainer.resume_conflicts(net, sde, prediction, **hparams)
        if diffs:
            raise ValueError(f"resuming {out_dir} with settings that differ from its checkpoint: "
                             + "; ".join(diffs) + ". Resume with the stored settings, or start a new run "
                             "(another directory, or overwrite=True / --force)")
    else:
        if net is None:
            raise ValueError("net is required unless resuming from an existing checkpoint")
        if sde is None:
            raise ValueError("sde is required unless resuming from an existing checkpoint")
        trainer = Trainer(net, sde, data, "eps" if prediction is None else prediction, y=y, overwrite=overwrite,
                          **hparams)
    remaining = max(0, int(steps) - trainer.step_count)
    trainer.run(remaining, progress=progress, out_dir=out_dir, ckpt_every=ckpt_every)
    return trainer
