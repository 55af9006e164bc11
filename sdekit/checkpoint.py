"""Checkpoints: safetensors weights + a JSON config, no pickle anywhere, committed as a whole.

A checkpoint is a directory holding
    config.json          format version, net config, SDE spec, prediction, step, training settings;
    model.safetensors    the network's weights (state_dict);
    ema.safetensors      the exponential moving average of the weights (same keys), if any;
    state.safetensors    what resuming needs: AdamW moments and step counts ("optim.<i>.<name>"),
                         the trainer's and torch's RNG states ("rng.*") and the loss history;
    loss.png             (from training) the loss curve;
    manifest.json        the sha256 of every file above, config.json included.
Format version 1 (no manifest.json, the weights' sha256 inside config.json, config.json itself
unchecked) is still read.

Commit protocol (POSIX). For a checkpoint directory P in a parent directory D:
  0. Everything is serialised and validated in memory first (config.json with ``allow_nan=False``,
     the size limits that loading enforces, the tensors): a value that cannot be stored fails here,
     before the file system is touched.
  1. An exclusive advisory lock, ``fcntl.flock`` on ``D/.P.lock``, serialises writers of P.
  2. Recovery of a writer that died (step 5 below): if P is missing and ``D/.P.old-*`` exists,
     that directory (the previous checkpoint, complete) is renamed back to P; then every leftover
     ``D/.P.new-*`` and ``D/.P.old-*`` is deleted.
  3. The replacement rule is checked (``replaces``: anything, nothing, or the checkpoint with a
     given id, the sha256 of its manifest: a compare-and-swap that stops two trainers clobbering
     each other).
  4. The files are written into a fresh directory ``D/.P.new-<random>`` (umask honoured; P's own
     mode copied), each fsync'ed, the manifest last, then the directory fsync'ed. Regular files in
     P that are not part of a checkpoint (a samples.png, say) are hard-linked in (copied where links
     are not supported); P holding anything else (a sub-directory) is refused.
  5. ``rename(P, D/.P.old-<random>)``, fsync(D), ``rename(D/.P.new-..., P)``, fsync(D): the commit
     point is the second rename. The old directory is then deleted.
An exception (KeyboardInterrupt included) undoes what the writer did; a SIGKILL or power loss at any
point leaves P intact (before step 5), P missing with the complete ``.old`` beside it (between the
two renames: readers use it, the next writer renames it back), or the new P (after). Readers take
the lock shared when the lock file exists, so they never mix files of two checkpoints.

One run per directory (``claim``): a trainer writing into P first creates ``D/.P.claim`` with
``O_CREAT | O_EXCL`` holding "<pid> <host>", and removes it when it ends; a second run into P finds the
file and is refused before its first step (``DirectoryClaimed``). A claim whose process is gone (same
host, no such pid: a SIGKILL) is stale and taken over; the check and the take-over run under the
exclusive flock above, so two runs never both take one stale claim.

Loading reads only JSON and safetensors (which parses a JSON header plus raw buffers), checks the
format version and every checksum on the very bytes it then parses, bounds every size in the config
before anything is allocated (``LIMITS``), and raises ``ValueError`` naming the file and the
problem for a missing, truncated, corrupt, tampered, oversized or mismatched file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .parameterization import PREDICTIONS, ScoreModel
from .sde import PATH_NAMES, VESDE, VPSDE, AffinePath, CosineVPSDE, DiscreteVPSDE, LinearSDE, SubVPSDE, TimeShift

try:
    import fcntl
except ImportError:  # not POSIX: no advisory lock
    fcntl = None  # type: ignore[assignment]

Tensor = torch.Tensor

FORMAT = "sdekit-checkpoint"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
LOSS_PLOT_NAME = "loss.png"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "state": "state.safetensors"}
CHECKPOINT_FILES = (CONFIG_NAME, MANIFEST_NAME, LOSS_PLOT_NAME, *WEIGHT_FILES.values())
ANY = "any"  # save_checkpoint(replaces=ANY): replace whatever checkpoint is there

# Generous but finite bounds checked on a config before anything is built from it (a crafted
# config.json must not make loading allocate without limit). Estimated parameter count <= 2e9
# (8 GB of float32 weights), one sample <= 2^27 numbers (512 MiB in float32).
LIMITS = {
    "config_bytes": 64 << 20, "params": 2_000_000_000, "width": 1 << 16, "depth": 10_000, "channels": 1 << 14,
    "levels": 16, "channel_mult": 1024, "res_blocks": 1000, "heads": 4096, "classes": 1_000_000,
    "event_numel": 1 << 27, "batch_size": 1 << 24,
}
_WRITE_CHUNK = 1 << 20

__all__ = ["FORMAT_VERSION", "LIMITS", "ANY", "CheckpointConflict", "sde_to_spec", "sde_from_spec",
           "save_checkpoint", "build_checkpoint", "commit_checkpoint", "read_checkpoint", "load_model",
           "checkpoint_id", "check_config_serialisable", "read_config", "claim", "DirectoryClaimed", "TrainingState",
           "training_state_tensors", "read_training_state"]


class CheckpointConflict(ValueError):
    """A save would replace a checkpoint it was not allowed to (see ``save_checkpoint(replaces=...)``)."""


class DirectoryClaimed(ValueError):
    """Another live run holds the claim on a checkpoint directory (see ``claim``)."""


# -- SDE specs -------------------------------------------------------------------------------------
def sde_to_spec(sde: LinearSDE) -> dict:
    """A JSON-able {"name": ..., "kwargs": {...}} rebuilding a built-in SDE exactly."""
    base = {"T": sde.T, "eps": sde.eps}
    if type(sde) in (VPSDE, SubVPSDE):
        kw = {"beta_min": getattr(sde, "beta_min"), "beta_max": getattr(sde, "beta_max"), **base}  # noqa: B009
    elif type(sde) is VESDE:
        kw = {"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max, **base}
    elif type(sde) is CosineVPSDE:
        kw = {"s": sde.s, **base}
    elif type(sde) is DiscreteVPSDE:
        kw = {"betas": [float(b) for b in sde.betas], "eps": sde.eps}
    elif type(sde) is TimeShift:
        kw = {"base": sde_to_spec(sde.base), "shift": sde.shift, "eps": sde.eps}
    elif type(sde) in PATH_NAMES.values():
        assert isinstance(sde, AffinePath)  # every named path is one
        kw = sde.config()
    else:
        from .interop import EDMSDE  # the one non-core SDE sdekit ships

        if type(sde) is EDMSDE:
            kw = dict(base)
        else:
            raise ValueError(
                f"cannot serialise {type(sde).__name__}: checkpoints store only the built-in SDEs "
                f"({', '.join(_sde_classes())}); rebuild a custom SDE yourself and pass it to load_model(sde=...)")
    return {"name": type(sde).__name__, "kwargs": kw}


def _sde_classes() -> dict:
    from .interop import EDMSDE

    return {c.__name__: c for c in (VPSDE, SubVPSDE, VESDE, CosineVPSDE, DiscreteVPSDE, EDMSDE, TimeShift,
                                    *PATH_NAMES.values())}


def sde_from_spec(spec: object) -> LinearSDE:
    """Inverse of ``sde_to_spec``."""
    classes = _sde_classes()
    if not isinstance(spec, dict) or spec.get("name") not in classes or not isinstance(spec.get("kwargs"), dict):
        raise ValueError(f"bad SDE spec {spec!r}: need {{'name': one of {', '.join(classes)}, 'kwargs': {{...}}}}")
    kwargs = dict(spec["kwargs"])
    if spec["name"] == "TimeShift":  # a shifted path nests its base path's spec
        kwargs["base"] = sde_from_spec(kwargs.get("base"))
    try:
        return classes[spec["name"]](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad SDE spec {spec!r}: {e}") from None


# -- validation --------------------------------------------------------------------------------------
def _bad_json_value(obj, where: str):
    """(path, value) of the first value JSON with allow_nan=False cannot store, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{where}[{k!r}]", k
            bad = _bad_json_value(v, f"{where}.{k}" if where else k)
            if bad:
                return bad
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = _bad_json_value(v, f"{where}[{i}]")
            if bad:
                return bad
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return None
    return where, obj


def _json_bytes(obj: dict, what: str) -> bytes:
    bad = _bad_json_value(obj, "")
    if bad is not None:
        where, value = bad
        kind = "NaN or infinity" if isinstance(value, float) else f"a {type(value).__name__}"
        raise ValueError(f"{what}: {where} = {value!r} cannot be stored in a checkpoint (JSON has no "
                         f"{kind}); fix that setting before training or saving")
    return json.dumps(obj, indent=1, allow_nan=False).encode()


def _config(net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int, extra: Optional[dict]) -> dict:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")
    net_config = getattr(net, "config", None)
    if not isinstance(net_config, dict) or "type" not in net_config:
        raise ValueError("the net needs a `config` dict with a 'type' key (sdekit.nets.UNet / MLP have one)")
    reserved = {"format", "format_version", "net", "sde", "prediction", "step"} & set(extra or {})
    if reserved:
        raise ValueError(f"extra must not set the reserved config entries {sorted(reserved)}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "net": net_config, "sde": sde_to_spec(sde),
            "prediction": prediction, "step": int(step), **(extra or {})}


def check_config_serialisable(net: torch.nn.Module, sde: LinearSDE, prediction: str, extra: Optional[dict] = None) -> None:
    """Raise ValueError now if ``save_checkpoint`` with these arguments would fail on its config
    (a NaN hyper-parameter, a custom SDE, a value over ``LIMITS``): call it before training."""
    config = _config(net, sde, prediction, 0, extra)
    _json_bytes(config, CONFIG_NAME)
    _check_limits(config, Path(CONFIG_NAME))


def _int_in(value, lo: int, hi: int, what: str, cfg_path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"checkpoint file {cfg_path}: {what} must be an integer in [{lo}, {hi}]; got {value!r}")
    return value


def _estimate_params(net: dict, cfg_path) -> int:
    """An upper estimate of the parameter count a net config builds (after bounding each field)."""
    L = LIMITS
    nc = net.get("num_classes")
    nc = 0 if nc is None else _int_in(nc, 1, L["classes"], "net.num_classes", cfg_path)
    if net.get("type") == "MLP":
        dim = _int_in(net.get("dim", 2), 1, L["event_numel"], "net.dim", cfg_path)
        w = _int_in(net.get("width", 128), 1, L["width"], "net.width", cfg_path)
        depth = _int_in(net.get("depth", 3), 0, L["depth"], "net.depth", cfg_path)
        emb = _int_in(net.get("emb_dim", 64), 1, L["width"], "net.emb_dim", cfg_path)
        return 2 * (dim + 1) * w + depth * (3 * w * w + 8 * w) + (emb + w + 2) * w + (nc + 1) * w + 4 * w
    if net.get("type") == "UNet":
        cin = _int_in(net.get("in_channels", 1), 1, L["channels"], "net.in_channels", cfg_path)
        oc = net.get("out_channels")
        cout = cin if oc is None else _int_in(oc, 1, L["channels"], "net.out_channels", cfg_path)
        base = _int_in(net.get("base_channels", 64), 1, L["channels"], "net.base_channels", cfg_path)
        mult = net.get("channel_mult", [1, 2, 2])
        if not isinstance(mult, list) or not 1 <= len(mult) <= L["levels"]:
            raise ValueError(f"checkpoint file {cfg_path}: net.channel_mult must be a list of 1 to {L['levels']} "
                             f"integers; got {mult!r}")
        mult = [_int_in(m, 1, L["channel_mult"], "net.channel_mult[i]", cfg_path) for m in mult]
        attn = net.get("attn_levels", [1])
        if not isinstance(attn, list) or len(attn) > L["levels"]:
            raise ValueError(f"checkpoint file {cfg_path}: net.attn_levels must be a list of at most "
                             f"{L['levels']} level indices; got {attn!r}")
        nrb = _int_in(net.get("num_res_blocks", 2), 0, L["res_blocks"], "net.num_res_blocks", cfg_path)
        _int_in(net.get("heads", 1), 1, L["heads"], "net.heads", cfg_path)
        emb = 4 * base
        c_max = base * max(mult)
        per_block = 9 * 2 * c_max * c_max + 9 * c_max * c_max + 2 * c_max * c_max + 2 * emb * c_max + 4 * c_max * c_max
        return (len(mult) * (2 * nrb + 2) + 3) * per_block + (base + emb) * emb + (nc + 1) * emb \
            + 9 * (cin + cout) * base
    return 0  # an unknown type is refused by build_net


def _check_limits(config: dict, cfg_path) -> None:
    """Refuse a config whose sizes would make loading allocate beyond ``LIMITS`` (before building)."""
    net = config.get("net")
    if not isinstance(net, dict):
        raise ValueError(f"checkpoint file {cfg_path}: 'net' must be a dict with a 'type' key; got {net!r}")
    params = _estimate_params(net, cfg_path)
    if params > LIMITS["params"]:
        raise ValueError(f"checkpoint file {cfg_path}: the net config describes about {params:.3g} parameters, over "
                         f"the limit of {LIMITS['params']:.3g} (sdekit.checkpoint.LIMITS['params']); refusing to build it")
    _int_in(config.get("step", 0), 0, 2**62, "step", cfg_path)
    data = config.get("data")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"checkpoint file {cfg_path}: 'data' must be a dict; got {type(data).__name__}")
    data = data or {}
    if "shape" in data:
        shape = data["shape"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
            raise ValueError(f"checkpoint file {cfg_path}: data.shape must be a list of 1 to 8 integers; got {shape!r}")
        shape = [_int_in(n, 1, LIMITS["event_numel"], "data.shape[i]", cfg_path) for n in shape]
        if math.prod(shape) > LIMITS["event_numel"]:
            raise ValueError(f"checkpoint file {cfg_path}: data.shape {shape} has {math.prod(shape):.3g} numbers per "
                             f"sample, over the limit of {LIMITS['event_numel']} (sdekit.checkpoint.LIMITS['event_numel'])")
    if "dim" in data:
        _int_in(data["dim"], 1, LIMITS["event_numel"], "data.dim", cfg_path)
    train = config.get("train")
    if train is not None:
        if not isinstance(train, dict):
            raise ValueError(f"checkpoint file {cfg_path}: 'train' must be a dict; got {type(train).__name__}")
        if "batch_size" in train:
            _int_in(train["batch_size"], 1, LIMITS["batch_size"], "train.batch_size", cfg_path)


def _check_sha_table(table, where) -> dict:
    if not isinstance(table, dict):
        raise ValueError(f"checkpoint file {where}: 'sha256' must be a dict mapping file names to hex digests; "
                         f"got {type(table).__name__}")
    for name, digest in table.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ValueError(f"checkpoint file {where}: the sha256 of {name!r} is not a 64-digit hex string: {digest!r}")
    return table


# -- writing -----------------------------------------------------------------------------------------
def _tensors_bytes(tensors: dict) -> bytes:
    return _st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _payload(net, sde, prediction, step, ema, state, extra, files) -> dict:
    """{file name: bytes} of a whole checkpoint, manifest last; raises before any file is touched."""
    config = _config(net, sde, prediction, step, extra)
    config_bytes = _json_bytes(config, CONFIG_NAME)
    _check_limits(config, Path(CONFIG_NAME))
    payload = {}
    for name, data in (files or {}).items():
        if name in CHECKPOINT_FILES[:2] or name in WEIGHT_FILES.values() or name != os.path.basename(name) \
                or name.startswith(".") or not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"files: {name!r} must be a plain file name (not hidden, not one of config.json, "
                             "manifest.json, *.safetensors) mapped to bytes")
        payload[name] = bytes(data)
    for kind, tensors in (("model", net.state_dict()), ("ema", ema), ("state", state)):
        if tensors is not None:
            payload[WEIGHT_FILES[kind]] = _tensors_bytes(tensors)
    payload[CONFIG_NAME] = config_bytes
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in payload.items()}}
    payload[MANIFEST_NAME] = json.dumps(manifest, indent=1).encode()
    return payload


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def _locked(target: Path, exclusive: bool):
    """flock on D/.P.lock: exclusive for a writer (creating the file), shared for a reader (only if it
    exists and can be opened; a read-only location is read without it)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(_lock_path(target), (os.O_RDWR | os.O_CREAT) if exclusive else os.O_RDONLY, 0o666)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


_CLAIMS: dict[Path, int] = {}  # claims held by this process: real path -> nesting depth


def _claim_path(target: Path) -> Path:
    return target.parent / f".{target.name}.claim"


def _claim_owner(file: Path) -> Optional[tuple[int, str]]:
    """(pid, host) written in a claim file, or None for a missing or unreadable one."""
    try:
        pid, host = file.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _take_claim(target: Path) -> None:
    """Create the claim file of ``target`` (the exclusive flock held), taking over a stale one."""
    file = _claim_path(target)
    me = (os.getpid(), socket.gethostname())
    for _ in range(2):
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            owner = _claim_owner(file)
            if owner is not None and owner[1] != me[1]:
                raise DirectoryClaimed(
                    f"{target} is claimed by process {owner[0]} on host {owner[1]} ({file}); if that run has ended, "
                    "delete the file") from None
            if owner is not None and owner[0] != me[0] and _alive(owner[0]):
                raise DirectoryClaimed(
                    f"{target} is in use by another run (process {owner[0]}, claim file {file}); wait for it to end "
                    "or write to another directory") from None
            os.unlink(file)  # stale: its process is gone (or an earlier process with this pid left it)
            continue
        try:
            os.write(fd, f"{me[0]} {me[1]}\n".encode())
        finally:
            os.close(fd)
        return
    raise DirectoryClaimed(f"could not claim {target} ({file} keeps coming back)")


@contextlib.contextmanager
def claim(path):
    """Hold ``path`` (a checkpoint directory) for this process for the duration of the block: one run per
    directory (module docstring). Re-entrant within a process; the claim is released (its file removed)
    when the outermost block exits, however it exits. Raises ``DirectoryClaimed`` (a ValueError) if a live
    process holds it. Creates the parent directory if needed, as a save would."""
    target = Path(os.path.realpath(path))
    if target in _CLAIMS:
        _CLAIMS[target] += 1
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target, exclusive=True):
            _take_claim(target)
        _CLAIMS[target] = 1
    try:
        yield target
    finally:
        _CLAIMS[target] -= 1
        if not _CLAIMS[target]:
            del _CLAIMS[target]
            file = _claim_path(target)
            with _locked(target, exclusive=True):
                if _claim_owner(file) == (os.getpid(), socket.gethostname()):
                    os.unlink(file)


def _leftovers(target: Path, kind: str) -> list:
    prefix = f".{target.name}.{kind}-"
    try:
        return sorted(target.parent / n for n in os.listdir(target.parent) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:_WRITE_CHUNK]):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fresh_dir(parent: Path, prefix: str, mode: int = 0o777) -> Path:
    while True:
        path = parent / f"{prefix}{secrets.token_hex(8)}"
        try:
            os.mkdir(path, mode)  # the umask applies, as for any directory the user creates
            return path
        except FileExistsError:
            continue


def _unused_name(parent: Path, prefix: str) -> Path:
    while True:
        path = parent / f"{prefix}{secrets.token_hex(8)}"
        if not os.path.lexists(path):
            return path


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _recover(target: Path) -> None:
    """Undo a writer that died (called with the exclusive lock held): put the previous checkpoint back
    if it died between its two renames, then delete every temporary directory it left."""
    olds = _leftovers(target, "old")
    if not os.path.lexists(target) and olds:
        keep = next((d for d in olds if (d / CONFIG_NAME).is_file()), None)
        if keep is not None:
            os.rename(keep, target)
            _fsync_dir(target.parent)
            olds.remove(keep)
    for d in olds + _leftovers(target, "new"):
        _remove_tree(d)


def _current_id(where: Path) -> Optional[str]:
    for name in (MANIFEST_NAME, CONFIG_NAME):  # version 2, else version 1
        try:
            return hashlib.sha256((where / name).read_bytes()).hexdigest()
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def checkpoint_id(path) -> Optional[str]:
    """The id of the checkpoint in ``path`` (the sha256 of its manifest.json, or of config.json for a
    version-1 checkpoint), or None if there is none. ``save_checkpoint(replaces=id)`` replaces only it."""
    target = Path(os.path.realpath(path))
    with _locked(target, exclusive=False):
        return _current_id(_readable_dir(target))


def _foreign_entries(target: Path) -> tuple[list, list]:
    """(regular files, other entries) in ``target`` that are not part of a checkpoint."""
    files: list = []
    others: list = []
    if not target.is_dir():
        return files, others
    for entry in os.scandir(target):
        if entry.name in CHECKPOINT_FILES:
            continue
        (files if entry.is_file(follow_symlinks=False) else others).append(entry.name)
    return files, others


def _check_target(target: Path, replaces) -> list:
    """Refusals that come before any write; returns the foreign files to carry over."""
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"checkpoint path {target} exists and is not a directory")
    cwd = os.path.realpath(os.getcwd())
    if cwd == str(target) or cwd.startswith(str(target) + os.sep):
        raise ValueError(f"cannot write a checkpoint into {target}: a checkpoint directory is replaced as a whole, "
                         "and it is (or contains) the current working directory; choose a sub-directory")
    files, others = _foreign_entries(target)
    if others:
        raise ValueError(f"{target} holds {', '.join(sorted(others)[:5])}, which are not part of a checkpoint; a "
                         "checkpoint directory is replaced as a whole, so sdekit writes only into a new or empty "
                         "directory or one holding a checkpoint (and plain files). Choose another directory")
    if replaces != ANY:
        check_replaces(target, replaces, _current_id(target))
    return files


def check_replaces(target, replaces, current: Optional[str]) -> None:
    """Refuse (``CheckpointConflict``) to replace the checkpoint ``current`` (its id, None: none there) in
    ``target`` unless ``replaces`` names it: None means "only if there is none"."""
    if current is not None and replaces is None:
        raise CheckpointConflict(
            f"{target} already holds a checkpoint; refusing to overwrite it: resume it (resume=True, --resume) or "
            "replace it explicitly (overwrite=True, --force)")
    if current is not None and current != replaces:
        raise CheckpointConflict(
            f"the checkpoint in {target} was replaced by another writer since this process last read or "
            "wrote it (two trainers on one directory?); refusing to overwrite it")


def _carry(target: Path, names: list, tmp: Path) -> None:
    for name in names:
        try:
            os.link(target / name, tmp / name)
        except OSError:
            shutil.copy2(target / name, tmp / name)


def _commit(target: Path, payload: dict, replaces) -> None:
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(target, exclusive=True):
        _recover(target)
        carry = _check_target(target, replaces)
        tmp = _fresh_dir(parent, f".{target.name}.new-")
        old = None
        try:
            if target.is_dir():
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            for name, data in payload.items():
                _write_file(tmp / name, data)
            _carry(target, carry, tmp)
            _fsync_dir(tmp)
            if os.path.lexists(target):
                old = _unused_name(parent, f".{target.name}.old-")
                os.rename(target, old)
                _fsync_dir(parent)
            os.rename(tmp, target)  # the commit point
            tmp = None  # type: ignore[assignment]  # nothing left to clean up
            _fsync_dir(parent)
        except BaseException:
            # undo what this process did (a SIGKILL skips this: the next save or load recovers instead)
            if old is not None and not os.path.lexists(target):
                os.rename(old, target)
                old = None
            if tmp is not None:
                _remove_tree(tmp)
            raise
        if old is not None:
            _remove_tree(old)


def build_checkpoint(net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int = 0,
                     ema: Optional[dict] = None, state: Optional[dict] = None, extra: Optional[dict] = None,
                     files: Optional[dict] = None) -> dict:
    """{file name: bytes} of a whole checkpoint (arguments as for ``save_checkpoint``), validated in
    memory: raises ValueError before the file system is touched."""
    return _payload(net, sde, prediction, step, ema, state, extra, files)


def commit_checkpoint(path, payload: dict, replaces=ANY) -> str:
    """Write ``build_checkpoint``'s payload to ``path`` as a whole (protocol in the module docstring);
    returns the new checkpoint's id (see ``save_checkpoint`` for ``replaces``)."""
    if MANIFEST_NAME not in payload or CONFIG_NAME not in payload:
        raise ValueError("commit_checkpoint needs the payload of build_checkpoint (config.json and manifest.json)")
    _commit(Path(os.path.realpath(path)), payload, replaces)
    return hashlib.sha256(payload[MANIFEST_NAME]).hexdigest()


def save_checkpoint(path, net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int = 0,
                    ema: Optional[dict] = None, state: Optional[dict] = None, extra: Optional[dict] = None,
                    files: Optional[dict] = None, replaces=ANY) -> Path:
    """Write a checkpoint directory as a whole (protocol in the module docstring). ``net`` must have a
    ``config`` dict; ``ema`` and ``state`` are optional dicts of tensors; ``extra`` is merged into
    config.json (JSON-able values: training settings, optimizer hyper-parameters, ...); ``files`` maps
    further file names (loss.png) to their bytes.

    replaces: ``ANY`` (default) replaces whatever checkpoint is in ``path``; None writes only if there
    is none; a checkpoint id (``checkpoint_id``) writes only if the checkpoint there is still that one.
    Otherwise ``CheckpointConflict`` (a ValueError) is raised and nothing is changed."""
    commit_checkpoint(path, build_checkpoint(net, sde, prediction, step, ema, state, extra, files), replaces)
    return Path(path)


# -- reading -----------------------------------------------------------------------------------------
def _readable_dir(target: Path) -> Path:
    """``target``, or while a writer that died between its two renames has not been recovered, the
    complete previous checkpoint it left beside it."""
    if not target.is_dir():
        for d in _leftovers(target, "old"):
            if (d / CONFIG_NAME).is_file():
                return d
    return target


def _read_json(file: Path, limit: int) -> tuple[bytes, dict]:
    if not file.is_file():
        raise ValueError(f"checkpoint file {file} is missing")
    if file.stat().st_size > limit:
        raise ValueError(f"checkpoint file {file} is {file.stat().st_size} bytes, over the limit of {limit} "
                         "(sdekit.checkpoint.LIMITS['config_bytes'])")
    raw = file.read_bytes()
    try:
        return raw, json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"checkpoint file {file} is not valid JSON ({e}); the file is corrupt or truncated") from None


def _read_config(path: Path) -> tuple[dict, dict]:
    """(config, sha256 table) of the checkpoint directory ``path``, verified and bounded."""
    cfg_path = path / CONFIG_NAME
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory (expected {CONFIG_NAME} + *.safetensors inside)")
    raw, config = _read_json(cfg_path, LIMITS["config_bytes"])
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"checkpoint file {cfg_path} is not an sdekit checkpoint config (no format={FORMAT!r})")
    version = config.get("format_version")
    if version not in READ_VERSIONS:
        raise ValueError(f"checkpoint file {cfg_path} has format_version {version!r}; "
                         f"this sdekit reads versions {', '.join(map(str, READ_VERSIONS))}")
    if version == 1:
        if "sha256" not in config:
            raise ValueError(f"checkpoint file {cfg_path} lacks the 'sha256' entry")
        table = _check_sha_table(config["sha256"], cfg_path)
    else:
        man_path = path / MANIFEST_NAME
        _, manifest = _read_json(man_path, LIMITS["config_bytes"])
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "sha256" not in manifest:
            raise ValueError(f"checkpoint file {man_path} is not an sdekit manifest (format={FORMAT!r}, 'sha256')")
        table = _check_sha_table(manifest["sha256"], man_path)
        expected = table.get(CONFIG_NAME)
        if expected is None:
            raise ValueError(f"checkpoint file {man_path} records no checksum for {CONFIG_NAME}")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected:
            raise ValueError(f"checkpoint file {cfg_path} fails its sha256 check (expected {expected[:12]}..., "
                             f"got {digest[:12]}...): it was modified, truncated or is from another checkpoint")
    for key in ("net", "sde", "prediction", "step"):
        if key not in config:
            raise ValueError(f"checkpoint file {cfg_path} lacks the {key!r} entry")
    if config["prediction"] not in PREDICTIONS:
        raise ValueError(f"checkpoint file {cfg_path}: unknown prediction {config['prediction']!r}; "
                         f"accepted: {', '.join(PREDICTIONS)}")
    needed = [WEIGHT_FILES["model"]] + ([WEIGHT_FILES["ema"], WEIGHT_FILES["state"]] if "train" in config else [])
    missing = [n for n in needed if n not in table]
    if missing:
        raise ValueError(f"checkpoint {path} records no checksum for {', '.join(missing)}"
                         + (" although it is a training checkpoint (config 'train')" if "train" in config else "")
                         + "; refusing a partial checkpoint")
    _check_limits(config, cfg_path)
    return config, table


def _read_tensors(path: Path, table: dict, kind: str) -> Optional[dict]:
    name = WEIGHT_FILES[kind]
    expected = table.get(name)
    file = path / name
    if expected is None:
        return None
    if not file.is_file():
        raise ValueError(f"checkpoint file {file} is missing (the checkpoint lists it)")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ValueError(f"checkpoint file {file} fails its sha256 check (expected {expected[:12]}..., "
                         f"got {digest[:12]}...): it was modified, truncated or is from another checkpoint")
    try:
        return _st_load(data)
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"checkpoint file {file} is not a valid safetensors file: {e}") from None


def read_config(path) -> dict:
    """The verified config of the checkpoint at ``path`` (no tensors read): what other modules ask for instead
    of opening the format's files themselves."""
    target = Path(os.path.realpath(path))
    with _locked(target, exclusive=False):
        where = _readable_dir(target)
        return _read_config(Path(path) if where == target else where)[0]


def read_checkpoint(path) -> tuple[dict, dict, Optional[dict], Optional[dict]]:
    """(config, model tensors, ema tensors or None, state tensors or None), all verified (the model's are
    always there: a checkpoint without them is refused)."""
    target = Path(os.path.realpath(path))
    with _locked(target, exclusive=False):
        where = _readable_dir(target)
        if where == target:
            where = Path(path)  # errors name the path as given
        config, table = _read_config(where)
        model = _read_tensors(where, table, "model")
        if model is None:
            raise ValueError(f"checkpoint {where} has no model weights")
        return config, model, _read_tensors(where, table, "ema"), _read_tensors(where, table, "state")


def load_state_strict(module: torch.nn.Module, tensors: dict, file) -> None:
    """Load tensors into module, raising ValueError (naming ``file``) on any key/shape/dtype mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [f"{k}: file {tuple(tensors[k].shape)} {tensors[k].dtype} vs net {tuple(own[k].shape)} {own[k].dtype}"
           for k in own if k in tensors and (tensors[k].shape != own[k].shape or tensors[k].dtype != own[k].dtype)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if bad:
            parts.append(f"mismatched {bad[:3]}{' ...' if len(bad) > 3 else ''}")
        raise ValueError(f"checkpoint file {file} does not match the network its config describes: " + "; ".join(parts))
    module.load_state_dict(tensors)


def load_model(path, use_ema: bool = True, device=None, sde: Optional[LinearSDE] = None) -> tuple[ScoreModel, dict]:
    """Rebuild (ScoreModel, config) from a checkpoint directory, for inference: the net is in eval mode
    (dropout off) and its parameters do not require grad, so sampling builds no autograd graph. To train or
    fine-tune it, call ``model.net.train().requires_grad_(True)`` (``Trainer.resume`` continues a run with
    its own net and optimizer and is not affected). Gradients with respect to x (likelihoods, guidance) flow
    as usual.

    use_ema: load the EMA weights when the checkpoint has them (what one samples from), else the raw
    weights. sde: override the stored SDE (needed only for a custom SDE, which is not serialised).
    """
    from .nets import build_net

    path = Path(path)
    config, model_t, ema_t, _ = read_checkpoint(path)
    try:
        net = build_net(config["net"])
    except ValueError as e:
        raise ValueError(f"checkpoint file {path / CONFIG_NAME}: {e}") from None
    if use_ema and ema_t is not None:
        load_state_strict(net, ema_t, path / WEIGHT_FILES["ema"])
    else:
        load_state_strict(net, model_t, path / WEIGHT_FILES["model"])
    if sde is None:
        try:
            sde = sde_from_spec(config["sde"])
        except ValueError as e:
            raise ValueError(f"checkpoint file {path / CONFIG_NAME}: {e}") from None
    if device is not None:
        net = net.to(device)
    net.eval().requires_grad_(False)
    return ScoreModel(net, sde, prediction=config["prediction"]), config


def finite_floats(values) -> list:
    """JSON refuses NaN/inf: map them to None."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]


# -- the training state's tensor layout ------------------------------------------------------------------
@dataclass
class TrainingState:
    """What state.safetensors holds for a training run, decoded: ``optimizer`` {parameter index: {name:
    tensor}} (AdamW's moments and step), the trainer's and torch's RNG states, ``ranks`` the (noise, torch)
    RNG states of each rank of a distributed run ([] for one process) and the loss history."""

    optimizer: dict
    rng_trainer: torch.Tensor
    rng_torch: torch.Tensor
    ranks: list = field(default_factory=list)
    losses: list = field(default_factory=list)


def training_state_tensors(state: TrainingState) -> dict:
    """The flat {name: tensor} of state.safetensors for ``state`` (``read_training_state`` inverts it):
    optim.<i>.<name>, rng.trainer, rng.torch, rng.rank<r>.noise / .torch, losses (float64)."""
    tensors = {f"optim.{i}.{name}": torch.as_tensor(value)
               for i, st in state.optimizer.items() for name, value in st.items()}
    tensors["rng.trainer"], tensors["rng.torch"] = state.rng_trainer, state.rng_torch
    for r, (noise_state, torch_state) in enumerate(state.ranks):
        tensors[f"rng.rank{r}.noise"], tensors[f"rng.rank{r}.torch"] = noise_state, torch_state
    tensors["losses"] = torch.tensor(state.losses, dtype=torch.float64)
    return tensors


def read_training_state(tensors: dict, where) -> TrainingState:
    """Decode ``training_state_tensors``'s layout; ValueError naming ``where`` (the file) for a missing or
    malformed entry."""
    optimizer: dict[int, dict] = {}
    try:
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                optimizer.setdefault(int(i), {})[name] = value
        n_ranks = sum(1 for k in tensors if k.startswith("rng.rank") and k.endswith(".noise"))
        ranks = [(tensors[f"rng.rank{r}.noise"], tensors[f"rng.rank{r}.torch"]) for r in range(n_ranks)]
        return TrainingState(optimizer=optimizer, rng_trainer=tensors["rng.trainer"], rng_torch=tensors["rng.torch"],
                             ranks=ranks, losses=tensors["losses"].tolist() if "losses" in tensors else [])
    except (KeyError, ValueError) as e:
        raise ValueError(f"checkpoint file {where}: bad training state ({e})") from None
