import dataclasses
import hashlib
import json
import pickle
import shutil

import pytest
import torch

import sdekit
from sdekit.checkpoint import load_model, save_checkpoint, sde_from_spec, sde_to_spec
from sdekit.data import toy_data
from sdekit.interop import EDMSDE
from sdekit.nets import MLP, UNet
from sdekit.train import Trainer, train



def small_mlp(**kw):
    return MLP(dim=2, width=32, depth=2, **kw)


def small_unet(**kw):
    return UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), **kw)


def test_short_training_lowers_loss():
    torch.manual_seed(0)
    x = toy_data("rings", 4000, seed=0)
    tr = train(small_mlp(), sdekit.VPSDE(), x, "eps", steps=400, batch_size=256, lr=2e-3, progress=False)
    first, last = sum(tr.losses[:40]) / 40, sum(tr.losses[-40:]) / 40
    assert last < 0.75 * first, (first, last)
    # the EMA model is better than an untrained one on held-out data
    x_test = toy_data("rings", 4000, seed=1)
    gen = torch.Generator().manual_seed(5)
    t = torch.rand(4000, generator=gen, dtype=torch.float64) * 0.999 + 0.001
    noise = torch.randn(4000, 2, generator=gen)
    trained = sdekit.losses.dsm_loss(tr.ema_model(), x_test, t=t, noise=noise)
    fresh = sdekit.losses.dsm_loss(sdekit.ScoreModel(small_mlp().eval(), sdekit.VPSDE()), x_test, t=t, noise=noise)
    assert trained < 0.75 * fresh


def _state(trainer):
    return {k: v.clone() for k, v in trainer.net.state_dict().items()}


@pytest.mark.parametrize("make,data,kw", [
    (lambda: small_mlp(dropout=0.2, num_classes=2), "moons", dict(weighting="likelihood", prediction="v")),
    (lambda: small_unet(dropout=0.1, num_classes=10), "digits", dict(weighting="min_snr", prediction="x0")),
])
def test_exact_resume(tmp_path, make, data, kw):
    if data == "digits":
        ds = sdekit.data.load_digits("test")
        x, y = ds.x, ds.y
        sde, steps, bs = sdekit.CosineVPSDE(), 4, 16
    else:
        x, y = toy_data("moons", 500, labels=True)
        sde, steps, bs = sdekit.VPSDE(), 15, 32
    hp = dict(batch_size=bs, lr=1e-3, warmup=5, ema_decay=0.9, seed=7, y=y, progress=False)
    prediction = kw.pop("prediction")
    torch.manual_seed(123)
    straight = train(make(), sde, x, prediction, steps=2 * steps, **kw, **hp)
    torch.manual_seed(123)
    train(make(), sde, x, prediction, steps=steps, out_dir=tmp_path / "ck", **kw, **hp)
    torch.manual_seed(999)  # resuming must restore every RNG, whatever happened in between
    torch.rand(10)
    resumed = train(None, None, x, steps=2 * steps, out_dir=tmp_path / "ck", resume=True, y=y, progress=False)
    assert resumed.step_count == 2 * steps
    assert resumed.losses == straight.losses
    for k, v in _state(straight).items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    for k, v in straight.ema.items():
        assert torch.equal(v, resumed.ema[k]), k
    # and the checkpoint on disk is the final state
    model, cfg = load_model(tmp_path / "ck")
    assert cfg["step"] == 2 * steps and cfg["prediction"] == prediction
    for k, v in straight.ema.items():
        assert torch.equal(v, model.net.state_dict()[k]), k
    assert (tmp_path / "ck" / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("sde", [sdekit.VPSDE(0.2, 15.0, T=0.9, eps=1e-4), sdekit.SubVPSDE(), sdekit.VESDE(0.02, 30.0),
                                 sdekit.CosineVPSDE(s=0.01), sdekit.DiscreteVPSDE.cosine(100), EDMSDE()])
def test_sde_spec_round_trip(sde):
    spec = json.loads(json.dumps(sde_to_spec(sde)))
    other = sde_from_spec(spec)
    assert type(other) is type(sde) and (other.T, other.eps) == (sde.T, sde.eps)
    t = torch.linspace(sde.eps, sde.T, 11, dtype=torch.float64)
    assert torch.equal(other.alpha(t), sde.alpha(t)) and torch.equal(other.sigma(t), sde.sigma(t))


def test_custom_sde_refused():
    from tests.sdes import CustomVP

    with pytest.raises(ValueError, match="cannot serialise CustomVP"):
        sde_to_spec(CustomVP())
    with pytest.raises(ValueError, match="bad SDE spec"):
        sde_from_spec({"name": "os.system", "kwargs": {}})


def test_checkpoint_round_trip_without_training(tmp_path):
    net = small_unet(num_classes=3).eval()
    save_checkpoint(tmp_path / "c", net, sdekit.VESDE(), "score", step=3)
    model, cfg = load_model(tmp_path / "c")
    assert isinstance(model.sde, sdekit.VESDE) and model.prediction == "score" and cfg["step"] == 3
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert torch.equal(model.net(x, t), net(x, t))
    with pytest.raises(ValueError, match="no training state"):
        Trainer.resume(tmp_path / "c", torch.randn(5, 1, 8, 8))


@pytest.fixture
def ckpt(tmp_path):
    x = toy_data("moons", 200)
    train(small_mlp(), sdekit.VPSDE(), x, "eps", steps=3, out_dir=tmp_path / "ck", batch_size=8, progress=False)
    return tmp_path / "ck"


def _rewrite_config(path, fn):
    """Edit config.json as an attacker who also re-seals the manifest would (so the edit itself, not the
    checksum of config.json, is what loading must catch)."""
    cfg = json.loads((path / "config.json").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    cfg["sha256"] = manifest["sha256"]
    fn(cfg)
    manifest["sha256"] = cfg.pop("sha256")
    data = json.dumps(cfg).encode()
    (path / "config.json").write_bytes(data)
    manifest["sha256"]["config.json"] = hashlib.sha256(data).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_loading_never_unpickles(ckpt, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle / torch.load used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    model, _ = load_model(ckpt)
    Trainer.resume(ckpt, toy_data("moons", 200))
    assert model.score(torch.randn(3, 2), 0.5).shape == (3, 2)
    from pathlib import Path

    import sdekit.checkpoint
    import sdekit.train

    files = [*Path(sdekit.checkpoint.__file__).parent.glob("*.py"), Path(sdekit.train.__file__)]
    assert len(files) > 2
    for file in files:
        src = file.read_text()
        assert "torch.load" not in src and "import pickle" not in src, file


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.safetensors"])
def test_tampered_weights_refused(ckpt, name):
    data = bytearray((ckpt / name).read_bytes())
    data[-3] ^= 0x01  # one bit in the raw tensor data
    (ckpt / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{name}.*sha256"):
        load_model(ckpt) if name != "state.safetensors" else Trainer.resume(ckpt, toy_data("moons", 200))


def test_truncated_weights_refused(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*sha256"):
        load_model(ckpt, use_ema=False)


def test_corrupt_safetensors_with_matching_checksum_refused(ckpt):
    bad = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"
    (ckpt / "model.safetensors").write_bytes(bad)
    _rewrite_config(ckpt, lambda c: c["sha256"].update({"model.safetensors": hashlib.sha256(bad).hexdigest()}))
    with pytest.raises(ValueError, match="model.safetensors is not a valid safetensors"):
        load_model(ckpt, use_ema=False)


def test_truncated_or_missing_config_refused(ckpt):
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json is missing"):
        load_model(ckpt)
    with pytest.raises(ValueError, match="not a directory"):
        load_model(ckpt / "nothing")


def test_missing_weights_file_refused(ckpt):
    (ckpt / "ema.safetensors").unlink()
    with pytest.raises(ValueError, match="ema.safetensors is missing"):
        load_model(ckpt)


def test_version_and_format_checked(ckpt):
    _rewrite_config(ckpt, lambda c: c.update(format_version=99))
    with pytest.raises(ValueError, match="format_version 99"):
        load_model(ckpt)
    _rewrite_config(ckpt, lambda c: c.update(format="something-else", format_version=1))
    with pytest.raises(ValueError, match="not an sdekit checkpoint"):
        load_model(ckpt)


def test_mismatched_net_config_refused(ckpt):
    _rewrite_config(ckpt, lambda c: c["net"].update(width=64))
    with pytest.raises(ValueError, match="does not match the network.*mismatched"):
        load_model(ckpt)


def test_weights_from_another_checkpoint_refused(ckpt, tmp_path):
    other = tmp_path / "other"
    save_checkpoint(other, small_unet(), sdekit.VPSDE(), "eps")
    shutil.copy(other / "model.safetensors", ckpt / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors fails its sha256"):
        load_model(ckpt, use_ema=False)
    # even with the checksum updated, the keys do not fit the MLP the config describes
    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    _rewrite_config(ckpt, lambda c: c["sha256"].update({"model.safetensors": digest}))
    with pytest.raises(ValueError, match="does not match the network"):
        load_model(ckpt, use_ema=False)


def test_bad_prediction_and_sde_in_config(ckpt):
    _rewrite_config(ckpt, lambda c: c.update(prediction="noise"))
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        load_model(ckpt)
    _rewrite_config(ckpt, lambda c: c.update(prediction="eps", sde={"name": "Nope", "kwargs": {}}))
    with pytest.raises(ValueError, match="config.json.*bad SDE spec"):
        load_model(ckpt)


def test_atomic_write_leaves_no_temp_files(ckpt):
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]


def _exit_code(main, argv) -> int:
    """The command's exit code: argparse's usage errors exit (SystemExit 2), the others are returned."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def test_cli_train_end_to_end(tmp_path, capsys):
    from sdekit.cli import main

    out = tmp_path / "run"
    args = ["train", "--data", "moons", "--steps", "20", "--batch-size", "16", "--out", str(out),
            "--prediction", "v", "--sde", "subvp", "--weighting", "min_snr", "--seed", "3"]
    assert main(args) == 0
    model, cfg = load_model(out)
    assert isinstance(model.sde, sdekit.SubVPSDE) and cfg["prediction"] == "v" and cfg["step"] == 20
    assert (out / "loss.png").exists()
    assert main(args[:4] + ["40"] + args[5:] + ["--resume"]) == 0
    _, cfg = load_model(out)
    assert cfg["step"] == 40 and cfg["train"]["weighting"] == "min_snr"
    assert main(["train", "--data", "digits", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "d"),
                 "--sde", "ve", "--channels", "8", "--conditional"]) == 0
    model, cfg = load_model(tmp_path / "d")
    assert cfg["net"]["type"] == "UNet" and cfg["net"]["num_classes"] == 10 and isinstance(model.sde, sdekit.VESDE)
    with pytest.raises(SystemExit):
        main(["train", "--data", "cifar", "--out", str(tmp_path / "x")])
    capsys.readouterr()
    assert _exit_code(main, ["train", "--data", "rings", "--out", str(out), "--resume", "--steps", "50"]) == 2
    assert "trained on 'moons'" in capsys.readouterr().err


def test_cli_train_refuses_overwrite_and_changed_resume_cleanly(tmp_path, capsys):
    """No checkpoint is replaced without --resume or --force; a resume with a changed setting is refused
    naming it; a NaN setting fails before anything is written; all as 'error:' lines with exit code 2."""
    from sdekit.checkpoint import checkpoint_id
    from sdekit.cli import main

    out = str(tmp_path / "run")
    base = ["train", "--data", "moons", "--batch-size", "8", "--out", out, "--no-progress"]
    assert main(base + ["--steps", "3"]) == 0
    first = checkpoint_id(out)
    for extra, says in [(["--steps", "2"], "refusing to overwrite"),
                        (["--steps", "2", "--force", "--grad-clip", "nan"], "argument --grad-clip: must be a finite number"),
                        (["--steps", "5", "--resume", "--lr", "0.5"], "lr: checkpoint")]:
        capsys.readouterr()
        code = _exit_code(main, base + extra)
        err = capsys.readouterr().err
        assert code == 2 and "sdekit train: error: " in err and says in err and "Traceback" not in err, (extra, err)
        assert checkpoint_id(out) == first  # the previous checkpoint is untouched and loads
        load_model(out)
    assert main(base + ["--steps", "5", "--resume"]) == 0  # stored settings: resumes
    assert load_model(out)[1]["step"] == 5
    assert main(base + ["--steps", "2", "--force"]) == 0  # an explicit new run replaces it
    assert load_model(out)[1]["step"] == 2


def test_interrupted_training_loses_nothing(tmp_path, monkeypatch):
    """A SIGINT arriving in the middle of step 7 ends the run after that step with a checkpoint;
    resuming then gives the same weights as an uninterrupted run."""
    import os
    import signal

    x = toy_data("moons", 256, seed=0)
    sde = sdekit.VPSDE()
    hp = dict(batch_size=16, lr=1e-3, seed=3)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, default_int_handler in a terminal

    torch.manual_seed(0)
    straight = Trainer(MLP(dim=2, width=16, depth=2), sde, x, "eps", **hp)
    straight.run(12, progress=False)

    torch.manual_seed(0)
    trainer = Trainer(MLP(dim=2, width=16, depth=2), sde, x, "eps", **hp)
    real_step = Trainer.step

    def step_with_signal(self):
        if self.step_count == 6:
            os.kill(os.getpid(), signal.SIGINT)  # delivered while the step is under way
        return real_step(self)

    monkeypatch.setattr(Trainer, "step", step_with_signal)
    with pytest.raises(KeyboardInterrupt, match="after step 7; checkpoint saved"):
        trainer.run(12, progress=False, out_dir=tmp_path)
    monkeypatch.setattr(Trainer, "step", real_step)
    resumed = Trainer.resume(tmp_path, x)
    assert resumed.step_count == 7
    resumed.run(5, progress=False)
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert signal.getsignal(signal.SIGINT) is before  # the run restores the handler it found


def test_train_config_holds_every_setting_once():
    """Trainer's settings are TrainConfig's fields: keywords and a config give the same trainer, the checkpoint
    stores exactly them, and a bad one is refused by the config before anything is built."""
    from sdekit.train import TRAIN_SETTINGS, TrainConfig

    data = torch.randn(16, 2)
    cfg = TrainConfig(batch_size=8, lr=1e-3, betas=[0.8, 0.9], seed=4, weighting="min_snr")
    by_kwargs = Trainer(MLP(dim=2, width=8, depth=1), sdekit.VPSDE(), data, batch_size=8, lr=1e-3,
                        betas=(0.8, 0.9), seed=4, weighting="min_snr")
    by_config = Trainer(MLP(dim=2, width=8, depth=1), sdekit.VPSDE(), data, config=cfg)
    assert by_kwargs.config == by_config.config == cfg and cfg.betas == (0.8, 0.9)
    assert set(by_config.hparams) == set(TRAIN_SETTINGS) and TrainConfig.from_stored(by_config.hparams) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    for bad, says in [(dict(lr=0), "lr must be"), (dict(weighting="nope"), "unknown weighting"),
                      (dict(betas=(0.9,)), "betas must be"), (dict(nope=1), "unknown hyper-parameters")]:
        with pytest.raises(ValueError, match=says):
            Trainer(MLP(dim=2, width=8, depth=1), sdekit.VPSDE(), data, **bad)


def test_training_state_layout_round_trips():
    """checkpoint.py owns the tensor layout: read_training_state inverts training_state_tensors, ranks included,
    and a missing entry is a ValueError naming the file."""
    from sdekit.checkpoint import TrainingState, read_training_state, training_state_tensors

    g = torch.Generator().manual_seed(1)
    moments = {0: {"exp_avg": torch.ones(3), "step": torch.tensor(2.0)}, 2: {"step": torch.tensor(1.0)}}
    state = TrainingState(optimizer=moments,
                          rng_trainer=g.get_state(), rng_torch=torch.get_rng_state(),
                          ranks=[(g.get_state(), torch.get_rng_state())] * 2, losses=[0.5, 0.25])
    back = read_training_state(training_state_tensors(state), "state.safetensors")
    assert back.losses == state.losses and len(back.ranks) == 2 and set(back.optimizer) == {0, 2}
    assert torch.equal(back.optimizer[0]["exp_avg"], torch.ones(3)) and torch.equal(back.rng_trainer, g.get_state())
    tensors = training_state_tensors(state)
    del tensors["rng.trainer"]
    with pytest.raises(ValueError, match="state.safetensors: bad training state"):
        read_training_state(tensors, "state.safetensors")
