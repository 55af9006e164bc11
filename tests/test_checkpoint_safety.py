"""Checkpoints survive failures: atomic commit as a whole, crash consistency under SIGKILL at every
file-system call, validation before the target is touched, locking, refusals, bounded configs."""
import hashlib
import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sdekit
import sdekit.checkpoint as C
from sdekit.checkpoint import CheckpointConflict, load_model, read_checkpoint, save_checkpoint
from sdekit.checkpoint.format import estimate_params
from sdekit.data import toy_data
from sdekit.nets import MLP
from sdekit.train import Trainer, train

ROOT = Path(__file__).resolve().parent.parent


def small_mlp():
    return MLP(dim=2, width=16, depth=1)


def _hp():
    return dict(batch_size=8, lr=1e-3, progress=False)


@pytest.fixture
def ck(tmp_path):
    torch.manual_seed(0)
    train(small_mlp(), sdekit.VPSDE(), toy_data("moons", 100), "eps", steps=3, out_dir=tmp_path / "ck", **_hp())
    return tmp_path / "ck"


def _reseal(path, cfg):
    """Write a (crafted) config.json and update the manifest so that only the content is wrong."""
    data = json.dumps(cfg).encode()
    (path / "config.json").write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"]["config.json"] = hashlib.sha256(data).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def _step(path):
    return read_checkpoint(path)[0]["step"]


# -- crash consistency -----------------------------------------------------------------------------
def test_sigkill_at_every_filesystem_call_leaves_a_loadable_checkpoint(tmp_path):
    """A saver process is SIGKILLed at its k-th file-system call for every k of a save (three settings:
    overwrite, overwrite with small writes and a user's file in the directory, first save), then at
    random calls of saves that start from the previous victim's debris, and 3 writers run at once.
    After each kill the previous checkpoint (or, past the commit, the new one) loads with exactly its
    contents, and the next save leaves nothing behind."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "_ckpt_kill_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["n_failures"] == 0, summary["failures"]
    points = summary["points"]
    print(f"kill points: {points}, total {sum(points.values())} in {time.perf_counter() - start:.1f} s")
    assert sum(points.values()) >= 200, points


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_exception_at_any_filesystem_call_rolls_back(ck, monkeypatch, exc):
    """A failure or a signal (KeyboardInterrupt) raised at the k-th call of a save, for every k, leaves
    the previous checkpoint in place and no temporary file."""
    before = _step(ck)
    net = small_mlp()
    names = ("open", "write", "rename", "mkdir", "rmdir", "unlink", "link", "chmod", "fsync")
    originals = {n: getattr(os, n) for n in names}
    k = 0
    while True:
        k += 1
        count = [0]

        def wrap(fn, count=count, k=k):
            def call(*a, **kw):
                count[0] += 1
                if count[0] == k:
                    raise exc
                return fn(*a, **kw)
            return call

        for n in names:
            monkeypatch.setattr(os, n, wrap(originals[n]))
        try:
            save_checkpoint(ck, net, sdekit.VPSDE(), "eps", step=k + 100, ema=net.state_dict(),
                            state={"a": torch.ones(2)})
            raised = False
        except type(exc):
            raised = True
        for n in names:
            monkeypatch.setattr(os, n, originals[n])
        if count[0] < k:  # the save made fewer than k calls: every call has been tried
            assert not raised and _step(ck) == k + 100
            break
        step = _step(ck)
        assert step in (before, k + 100), (k, step)  # only a failure past the commit point gives the new one
        leftovers = [n for n in os.listdir(ck.parent) if n not in ("ck", ".ck.lock")]
        assert not leftovers or step == k + 100, (k, leftovers)  # an old copy left only past the commit
        before = step
    assert k > 20


def test_failed_save_keeps_previous_checkpoint_issue_reproducer(ck):
    """issue 13 item 1: a NaN hyper-parameter made the final write fail after the weights were replaced."""
    x = toy_data("moons", 100)
    for bad in (dict(grad_clip=float("nan")), dict(lr=float("inf")), dict(ema_decay=float("nan"))):
        # refused when the trainer is built (sdekit.validate), long before a save could fail
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number"):
            Trainer(small_mlp(), sdekit.VPSDE(), x, "eps", batch_size=8, overwrite=True, **bad)
        assert _step(ck) == 3
    # what only a save can find (a setting JSON cannot store) is still checked before the first step
    steps_run = []
    tr = Trainer(small_mlp(), sdekit.VPSDE(), x, "eps", batch_size=8, overwrite=True)
    tr.meta = {"scale": float("nan")}
    tr.step = lambda: steps_run.append(1) or 0.0  # noqa: E731
    with pytest.raises(ValueError, match="cannot be stored"):
        tr.run(3, progress=False, out_dir=ck)
    assert not steps_run, "validation must come before training"
    assert _step(ck) == 3
    ve = sdekit.VESDE(sigma_max=float("inf"))
    with pytest.raises(ValueError, match="sde.kwargs.sigma_max = inf"):
        train(small_mlp(), ve, x, "eps", steps=2, out_dir=ck, overwrite=True, **_hp())
    # direct API: nothing of the target is touched either
    net = small_mlp()
    with pytest.raises(ValueError, match="cannot be stored"):
        save_checkpoint(ck, net, sdekit.VPSDE(), "eps", extra={"train": {"lr": math.nan}})
    Trainer.resume(ck, x).run(2, progress=False, out_dir=ck)
    assert _step(ck) == 5


def test_reader_and_next_writer_recover_a_writer_killed_between_its_renames(ck, tmp_path):
    """The one moment when the directory is absent: readers use the complete previous copy beside it, and
    the next save puts it back before committing."""
    old = tmp_path / ".ck.old-deadbeef"
    os.rename(ck, old)
    (tmp_path / ".ck.new-cafe").mkdir()
    (tmp_path / ".ck.new-cafe" / "model.safetensors").write_bytes(b"partial")
    model, cfg = load_model(ck)
    assert cfg["step"] == 3 and C.checkpoint_id(ck) is not None
    tr = train(None, None, toy_data("moons", 100), steps=5, out_dir=ck, resume=True, progress=False)
    assert tr.step_count == 5 and _step(ck) == 5
    assert sorted(os.listdir(tmp_path)) == [".ck.lock", "ck"]


# -- overwriting, concurrency, permissions ------------------------------------------------------------
def test_overwrite_needs_resume_or_force(ck):
    x = toy_data("moons", 100)
    for steps in (4, 0):
        with pytest.raises(CheckpointConflict, match="already holds a checkpoint.*--resume.*--force"):
            train(small_mlp(), sdekit.VPSDE(), x, "eps", steps=steps, out_dir=ck, **_hp())
    assert _step(ck) == 3
    train(small_mlp(), sdekit.VPSDE(), x, "eps", steps=2, out_dir=ck, overwrite=True, **_hp())
    assert _step(ck) == 2


def test_two_trainers_on_one_directory_do_not_clobber_each_other(tmp_path):
    x = toy_data("moons", 100)
    a = Trainer(small_mlp(), sdekit.VPSDE(), x, "eps", batch_size=8)
    b = Trainer(small_mlp(), sdekit.VPSDE(), x, "eps", batch_size=8)
    a.run(2, progress=False, out_dir=tmp_path / "ck", ckpt_every=1)
    with pytest.raises(CheckpointConflict):
        b.run(2, progress=False, out_dir=tmp_path / "ck", ckpt_every=1)
    # two resumes of one checkpoint: the second writer finds it replaced
    c, d = Trainer.resume(tmp_path / "ck", x), Trainer.resume(tmp_path / "ck", x)
    c.run(1, progress=False, out_dir=tmp_path / "ck")
    with pytest.raises(CheckpointConflict, match="replaced by another writer"):
        d.run(1, progress=False, out_dir=tmp_path / "ck")
    assert _step(tmp_path / "ck") == 3
    assert not [n for n in os.listdir(tmp_path) if n not in ("ck", ".ck.lock")]


def test_resume_refuses_changed_settings_and_names_them(ck):
    x = toy_data("moons", 100)
    with pytest.raises(ValueError, match="prediction: checkpoint 'eps', given 'v'.*sde: checkpoint VPSDE.*lr: "):
        train(small_mlp(), sdekit.SubVPSDE(), x, "v", steps=5, out_dir=ck, resume=True, lr=0.5, progress=False)
    with pytest.raises(ValueError, match="net: checkpoint"):
        train(MLP(dim=2, width=8, depth=1), None, x, steps=5, out_dir=ck, resume=True, progress=False)
    assert _step(ck) == 3
    # the same settings resume
    assert train(small_mlp(), sdekit.VPSDE(), x, "eps", steps=5, out_dir=ck, resume=True, **_hp()).step_count == 5


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        net = small_mlp()
        save_checkpoint(tmp_path / "ck", net, sdekit.VPSDE(), "eps", files={"loss.png": b"x"})
    finally:
        os.umask(old)
    for f in (tmp_path / "ck").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert stat.S_IMODE((tmp_path / "ck").stat().st_mode) == 0o777 & ~umask


def test_user_files_are_kept_and_directories_refused(ck):
    (ck / "samples.png").write_bytes(b"mine")
    Trainer.resume(ck, toy_data("moons", 100)).run(1, progress=False, out_dir=ck)
    assert (ck / "samples.png").read_bytes() == b"mine" and (ck / "loss.png").stat().st_size > 1000
    (ck / "runs").mkdir()
    with pytest.raises(ValueError, match="holds runs, which are not part of a checkpoint"):
        save_checkpoint(ck, small_mlp(), sdekit.VPSDE(), "eps")
    assert _step(ck) == 4


# -- the manifest --------------------------------------------------------------------------------------
def test_config_json_is_checksummed(ck):
    text = (ck / "config.json").read_text()
    (ck / "config.json").write_text(text.replace('"prediction": "eps"', '"prediction": "v"'))
    with pytest.raises(ValueError, match="config.json fails its sha256 check"):
        load_model(ck)


@pytest.mark.parametrize("drop", ["ema.safetensors", "state.safetensors", "model.safetensors", "config.json"])
def test_a_missing_entry_is_refused_not_half_loaded(ck, drop):
    manifest = json.loads((ck / "manifest.json").read_text())
    del manifest["sha256"][drop]
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"records no checksum for {drop}"):
        read_checkpoint(ck)


def test_sha256_that_is_not_a_dict(ck):
    manifest = json.loads((ck / "manifest.json").read_text())
    for bad in ("abc", ["x"], {"model.safetensors": 12}):
        manifest["sha256"] = bad
        (ck / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match="manifest.json: .*(must be a dict|not a 64-digit hex)"):
            load_model(ck)
    (ck / "manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest.json is missing"):
        load_model(ck)


def test_version_1_checkpoints_still_load(ck):
    """The previous format (checksums inside config.json, no manifest) is read, with the same checks."""
    manifest = json.loads((ck / "manifest.json").read_text())
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(format_version=1, sha256={k: v for k, v in manifest["sha256"].items() if k.endswith(".safetensors")})
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "manifest.json").unlink()
    model, cfg = load_model(ck)
    assert cfg["step"] == 3
    Trainer.resume(ck, toy_data("moons", 100)).run(1, progress=False, out_dir=ck)
    assert read_checkpoint(ck)[0]["format_version"] == C.FORMAT_VERSION
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(format_version=1, sha256="not a dict")
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "manifest.json").unlink()
    with pytest.raises(ValueError, match="'sha256' must be a dict"):
        load_model(ck)


# -- bounded configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda c: c["net"].update(width=20000), r"about 1.2e\+09|about [0-9.e+]+ parameters, over the limit"),
    (lambda c: c["net"].update(width=40000, depth=3), "parameters, over the limit of 2e\\+09"),
    (lambda c: c["net"].update(depth=1e9), r"net.depth must be an integer in \[0, 10000\]; got 1000000000.0"),
    (lambda c: c["net"].update(depth=10**9), r"net.depth must be an integer in \[0, 10000\]"),
    (lambda c: c.setdefault("data", {}).update(shape=[1e6, 1e6]), r"data.shape\[i\] must be an integer"),
    (lambda c: c.setdefault("data", {}).update(shape=[100000, 100000]), "numbers per sample, over the limit"),
    (lambda c: c["train"].update(batch_size=10**12), r"train.batch_size must be an integer in \[1, 16777216\]"),
    (lambda c: c.update(net={"type": "UNet", "base_channels": 4096, "channel_mult": [1, 2, 4, 8]}),
     "parameters, over the limit"),
    (lambda c: c.update(net={"type": "UNet", "channel_mult": list(range(1, 40))}), "channel_mult must be a list of 1"),
])
def test_oversized_configs_are_refused_before_allocating(ck, change, message):
    cfg = json.loads((ck / "config.json").read_text())
    change(cfg)
    if "width" in cfg["net"] and cfg["net"]["width"] == 20000:
        cfg["net"]["depth"] = 3
    _reseal(ck, cfg)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load_model(ck)
    with pytest.raises(ValueError, match=message):
        Trainer.resume(ck, toy_data("moons", 100))
    assert time.perf_counter() - start < 2


def test_oversized_config_file_is_not_read(ck):
    with open(ck / "config.json", "ab") as f:
        f.truncate(C.LIMITS["config_bytes"] + 1)
    with pytest.raises(ValueError, match="over the limit"):
        load_model(ck)


def test_limits_accept_real_networks():
    """The bounds are generous: the nets sdekit builds (and far larger ones) pass, with an estimate at
    least as large as the true parameter count."""
    from sdekit.nets import UNet

    for net in (MLP(dim=2, width=128, depth=3, num_classes=10), MLP(dim=784, width=1024, depth=8),
                UNet(in_channels=3, base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2, num_classes=10),
                UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)):
        true = sum(p.numel() for p in net.parameters())
        estimate = estimate_params(net.config, "config.json")
        assert true <= estimate <= 4 * true, (net.config, true, estimate)
