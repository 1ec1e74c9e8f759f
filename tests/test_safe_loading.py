"""The loaders hand out nothing shared, accept protocol-2 pickles, refuse expanded tensors and
non-finite values on load, and never save non-finite values."""

import os
import pickle

import pytest
import torch

from gan_prior import CheckpointError, PortraitGAN, load_pyramid, save_pyramid, tiny_config
from gan_prior.checkpoint import Record, read_checkpoint
from gan_prior.checks import check_generator_config
from gan_prior.generator import check_generator_size


def test_a_pickle_cannot_change_the_allow_listed_classes_for_later_files(tmp_path):
    # GLOBAL the persistence record's class, then BUILD (None, {"init_kwargs": ...}) on it: a setattr
    attack = (
        b"\x80\x02ctorch_utils.persistence\n_reconstruct_persistent_obj\n"
        b"(N}X\x0b\x00\x00\x00init_kwargsX\x03\x00\x00\x00bad\x73tb0}q\x00."
    )
    (tmp_path / "attack.pkl").write_bytes(attack)
    assert read_checkpoint(str(tmp_path / "attack.pkl")) == {}  # the BUILD hit a fresh factory
    assert Record({"state": {"_init_kwargs": {"z_dim": 8}}}).init_kwargs == {"z_dim": 8}
    # the same on a stub class: refused (or applied to a fresh class), never the shared one
    (tmp_path / "stub.pkl").write_bytes(
        b"\x80\x02cnumpy\nndarray\n(N}X\x08\x00\x00\x00p3d_markK\x01stb0}q\x00."
    )
    with pytest.raises(CheckpointError, match="stub.pkl"):
        read_checkpoint(str(tmp_path / "stub.pkl"))
    from gan_prior.checkpoint import _ALLOWED

    assert not hasattr(_ALLOWED[("numpy", "ndarray")], "p3d_mark")
    assert not hasattr(
        _ALLOWED[("torch_utils.persistence", "_reconstruct_persistent_obj")], "init_kwargs"
    ) or isinstance(Record.init_kwargs, property)


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_plain_pickles_of_tensors_load_at_every_protocol(tmp_path, proto):
    state = {"trigrids_8": torch.randn(1, 3, 36, 8, 8), "ws": torch.randn(1, 6, 64)}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(state, protocol=proto))
    levels, ws = load_pyramid(str(tmp_path / "p.pkl"))
    assert torch.equal(levels[8], state["trigrids_8"]) and torch.equal(ws, state["ws"])


def test_codecs_encode_is_only_latin1_bytes(tmp_path):
    evil = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "e.pkl").write_bytes(evil)
    with pytest.raises(CheckpointError, match="e.pkl"):
        read_checkpoint(str(tmp_path / "e.pkl"))


def test_expanded_tensors_and_non_finite_values_are_refused(tmp_path):
    big = torch.zeros(64).expand(4096, 64)
    torch.save({"model": {"trigrids_8": big}}, tmp_path / "x.pth")
    assert os.path.getsize(tmp_path / "x.pth") < 10_000
    with pytest.raises(CheckpointError, match="x.pth: level trigrids_8 is an expanded or overlapping tensor"):
        load_pyramid(str(tmp_path / "x.pth"))
    levels = {8: torch.randn(1, 3, 36, 8, 8)}
    ws = torch.randn(1, 6, 64)
    for bad_levels, bad_ws, name in (
        ({8: levels[8] * float("nan")}, ws, "trigrids_8"),
        (levels, ws * float("inf"), "ws"),
    ):
        with pytest.raises(ValueError, match=f"p.safetensors: {name} holds .*NaN/Inf value.*; not saved"):
            save_pyramid(str(tmp_path / "p.safetensors"), bad_levels, bad_ws)
        assert not os.path.exists(tmp_path / "p.safetensors")
        torch.save({"model": {"trigrids_8": bad_levels[8], "ws": bad_ws}}, tmp_path / "n.pth")
        with pytest.raises(CheckpointError, match=f"n.pth: (level )?{name} holds .*NaN/Inf"):
            load_pyramid(str(tmp_path / "n.pth"))
    G = PortraitGAN.random(tiny_config())
    G.torgb.bias.data[0] = float("nan")
    with pytest.raises(ValueError, match="weight torgb.bias holds 1 NaN/Inf.*not saved"):
        G.save(str(tmp_path / "g"))
    assert not os.path.exists(tmp_path / "g" / "model.safetensors")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"w_dim": -1}, "w_dim = -1 is out of range"),
        ({"z_dim": "abc"}, "z_dim is 'abc', expected an integer"),
        ({"render": 5}, "render is 5, expected a mapping"),
        ({"synthesis_resolution": 24}, "a power of two"),
        ({"synthesis_resolution": 1 << 20}, "out of range"),
        ({"background": "yes"}, "expected true or false"),
        ({"render": {"ray_start": 4.0}}, "ray_start < ray_end"),
        ({"w_dim": True}, "expected an integer"),
    ],
)
def test_generator_configs_are_checked_before_building(change, message):
    with pytest.raises(ValueError, match=message):
        check_generator_config({**tiny_config().to_dict(), **change}, "cfg.json")
    with pytest.raises(ValueError, match="expected a mapping"):
        check_generator_config([1, 2], "cfg.json")


def test_the_size_estimate_allocates_nothing_and_refuses_huge_models():
    assert check_generator_size(tiny_config()) == sum(
        t.numel() for t in PortraitGAN(tiny_config()).state_dict().values()
    )
    with pytest.raises(ValueError, match="G values"):
        check_generator_size(
            tiny_config(
                background_resolution=2048, background_channel_base=1 << 20, background_channel_max=4096
            )
        )
