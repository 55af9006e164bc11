import math

import pytest
import torch

from sdekit import data


@pytest.mark.parametrize("name", data.TOY_SETS)
def test_toy_sets_reproducible_and_labelled(name):
    x, y = data.toy_data(name, 1000, seed=3, labels=True)
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert y.shape == (1000,) and y.dtype == torch.long
    assert torch.equal(x, data.toy_data(name, 1000, seed=3))
    assert not torch.equal(x, data.toy_data(name, 1000, seed=4))
    assert x.abs().max() < 4 and x.std() > 0.5
    ds = data.load_dataset(name, n=500)
    assert len(ds) == 500 and int(ds.y.max()) < ds.num_classes and int(ds.y.min()) >= 0
    assert len(torch.unique(ds.y)) == ds.num_classes


def test_checkerboard_only_dark_squares():
    x = data.toy_data("checkerboard", 4000, seed=0)
    cell = torch.floor(x + 2).long()
    assert ((cell.sum(1) % 2) == 0).all()


def test_rings_match_their_mixture():
    gm = data.rings_mixture()
    x = data.toy_data("rings", 20000, seed=1)
    torch.testing.assert_close(x.double().mean(0), gm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.double().T), gm.covariance(), atol=0.05, rtol=0)


def test_unknown_names():
    with pytest.raises(ValueError, match="accepted"):
        data.toy_data("spirals", 10)
    with pytest.raises(ValueError, match="accepted"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        data.load_digits("val")


def test_digits_levels_split_and_metadata():
    tr, te, al = data.load_digits("train"), data.load_digits("test"), data.load_digits("all")
    assert tr.x.shape == (1498, 1, 8, 8) and te.x.shape == (299, 1, 8, 8) and al.x.shape == (1797, 1, 8, 8)
    assert tr.num_classes == 10 and set(tr.y.tolist()) == set(range(10))
    assert tr.x.min() == -1 and tr.x.max() == 1
    levels = (al.x - tr.meta["offset"]) / tr.meta["scale"]
    assert torch.equal(levels, levels.round()) and set(levels.unique().long().tolist()) <= set(range(17))
    assert tr.meta["levels"] == 17 and tr.meta["bin_width"] == 1 / 8
    # the split is a partition of the full set, fixed forever
    assert torch.equal(al.x[5::6], te.x)
    assert torch.equal(data.load_digits("train").x, tr.x)


def test_dequantize_stays_in_bin():
    x = data.load_digits("test").x
    d = data.dequantize(x, generator=torch.Generator().manual_seed(0))
    assert ((d - x).abs() <= 1 / 16).all() and (d - x).abs().mean() > 1 / 64
    assert math.isclose(float((d - x).mean()), 0.0, abs_tol=2e-3)
