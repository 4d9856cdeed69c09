"""Checkpoint formats: the authors' files, ours, safetensors; clear errors; atomic writes."""
from __future__ import annotations

import os

import pytest
import torch

from corun import CORUN, CheckpointError, load_checkpoint, load_model, save_checkpoint
from corun.checkpoint import infer_config, read_state_dict, save_safetensors
from corun.utils import atomic_write


def small(seed: int, **kw) -> CORUN:
    torch.manual_seed(seed)
    return CORUN(**{"depth": 3, "dim": 8, **kw})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_keeps_weights_and_outputs(tmp_path):
    model, ema = small(0), small(1)
    path = save_checkpoint(tmp_path / "ck.pth", model, ema=ema, step=7)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"params", "params_ema", "model_config", "step"} and raw["step"] == 7
    fresh = small(2)
    meta = load_checkpoint(fresh, path)
    assert meta["source_key"] == "params_ema" and same_weights(fresh, ema)
    load_checkpoint(fresh, path, prefer="params")
    assert same_weights(fresh, model)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x).image, model(x).image)


def test_authors_format_with_module_prefix_and_params_only(tmp_path):
    model = small(0)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"params": sd}, tmp_path / "a.pth")  # BasicSR training file without EMA
    fresh = small(1)
    assert load_checkpoint(fresh, tmp_path / "a.pth")["source_key"] == "params"
    assert same_weights(fresh, model)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert load_checkpoint(small(1), tmp_path / "bare.pth")["source_key"] is None


def test_load_model_infers_architecture_from_keys(tmp_path):
    model = small(0, depth=4, dim=16)
    torch.save({"params_ema": model.state_dict()}, tmp_path / "nocfg.pth")  # no model_config
    assert infer_config(model.state_dict()) == model.config
    loaded = load_model(tmp_path / "nocfg.pth")
    assert loaded.config == model.config and same_weights(loaded, model) and not loaded.training


def test_safetensors_fp16(tmp_path):
    model = small(0)
    path = save_safetensors(tmp_path / "w.safetensors", model)
    sd, meta = read_state_dict(path)
    assert all(v.dtype == torch.float16 for v in sd.values())
    loaded = load_model(path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[k], v, rtol=1e-3, atol=1e-4)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    torch.save({"params_ema": small(0, depth=2).state_dict()}, tmp_path / "d2.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(small(0, depth=3), tmp_path / "d2.pth")
    msg = str(err.value)
    assert "d2.pth" in msg and "missing keys" in msg and "basic.0.trans_net" in msg
    torch.save({"params_ema": small(0, dim=16).state_dict()}, tmp_path / "w16.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*\n.*first\.") :
        load_checkpoint(small(0), tmp_path / "w16.pth")
    sd = small(0).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys .1.:\n    extra.weight"):
        load_checkpoint(small(0), tmp_path / "extra.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(small(0), path)


def test_truncated_checkpoint_is_an_error(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pth", small(0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(small(0), path)


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "ck.pth"
    target.write_bytes(b"previous")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["ck.pth"]  # no temp file left behind
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) != 0o600


# ---------------------------------------------------------------------------------------- run folders, any network

def test_latest_checkpoint_is_the_largest_step(tmp_path):
    from corun.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for name in ("step_0000009.pth", "step_0000010.pth", "step_0000002.pth", "notes.pth", ".step_0000099.pth.tmp"):
        (ck / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == ck / "step_0000010.pth"


FACTORY = "torch.nn:Conv2d"  # any importable callable that returns an nn.Module
KWARGS = {"in_channels": 3, "out_channels": 3, "kernel_size": 3, "padding": 1}


def test_a_factory_network_records_its_recipe_and_loads_back(tmp_path):
    from corun.checkpoint import build_network, network_record

    torch.manual_seed(0)
    net = build_network(FACTORY, KWARGS)
    assert network_record(net) == {"model_factory": {"factory": FACTORY, "kwargs": KWARGS}}
    assert network_record(small(0)) == {"model_config": {"depth": 3, "dim": 8, "levels": 3, "num_blocks": [1, 1, 1]}}
    assert network_record(torch.nn.Conv2d(3, 3, 1)) == {}  # built elsewhere: nothing to rebuild it from
    x = torch.rand(1, 3, 8, 8)
    for path in (save_checkpoint(tmp_path / "ck.pth", net, step=3),
                 save_safetensors(tmp_path / "ck.safetensors", net, dtype=torch.float32)):
        sd, meta = read_state_dict(path)
        assert meta["model_factory"] == {"factory": FACTORY, "kwargs": KWARGS} and "model_config" not in meta
        again = load_model(path)
        assert isinstance(again, torch.nn.Conv2d) and same_weights(again, net)
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("spec, message", [
    ("torch.nn", "expected 'package.module:function'"),
    ("no_such_pkg_xyz.mod:net", "cannot import no_such_pkg_xyz.mod"),
    ("torch.nn:NoSuchLayer", "has no attribute 'NoSuchLayer'"),
    ("torch:pi", "is not callable"),
    ("torch:zeros", "returned Tensor, not a torch.nn.Module"),
])
def test_a_bad_factory_is_named(spec, message):
    from corun.checkpoint import build_network

    with pytest.raises(ValueError, match=message):
        build_network(spec, {"size": (1,)} if spec == "torch:zeros" else {})


def test_a_factory_checkpoint_that_cannot_be_rebuilt_is_a_checkpoint_error(tmp_path):
    from corun.checkpoint import build_network

    path = save_checkpoint(tmp_path / "ck.pth", build_network(FACTORY, KWARGS))
    ck = torch.load(path, weights_only=True)
    ck["model_factory"] = {"factory": "no_such_pkg_xyz:net", "kwargs": {}}
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_model(path)
