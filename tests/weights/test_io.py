"""Weight-file IO: clear errors for every bad input, opt-in pickle."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from humandiff.weights import io


def test_read_config_errors(tmp_path):
    with pytest.raises(io.WeightsError, match="config file not found"):
        io.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(io.WeightsError, match=r"malformed JSON in .*config.json"):
        io.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"a": 1}))
    assert io.read_config(str(tmp_path)) == {"a": 1}


def test_state_dict_safetensors_and_missing(tmp_path):
    with pytest.raises(io.WeightsError, match="no weight file"):
        io.read_state_dict(str(tmp_path))
    save_file({"w": np.ones((2, 3), np.float32)}, str(tmp_path / "model.safetensors"))
    sd = io.read_state_dict(str(tmp_path))
    np.testing.assert_array_equal(sd["w"], np.ones((2, 3)))
    with pytest.raises(io.WeightsError, match="weights not found"):
        io.read_state_dict(str(tmp_path / "nope.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(io.WeightsError, match="broken.safetensors"):
        io.read_state_dict(str(tmp_path / "broken.safetensors"))


def test_pickle_refused_without_opt_in(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "mm.ckpt"
    torch.save({"state_dict": {"a.weight": torch.arange(4.0)}}, str(path))
    with pytest.raises(io.WeightsError, match=r"mm.ckpt is a pickle file"):
        io.read_state_dict(str(path))
    sd = io.read_state_dict(str(path), allow_pickle=True)
    np.testing.assert_array_equal(sd["a.weight"], np.arange(4.0))


def test_validate_lists_every_problem():
    expected = {"a": (2,), "b": (3, 3), "c": (1,)}
    got = {"a": (2,), "b": (3, 4), "d": (5,)}
    with pytest.raises(io.WeightsError) as err:
        io.validate(expected, got, "unet/model.safetensors")
    msg = str(err.value)
    assert "unet/model.safetensors" in msg
    assert "missing (1): c" in msg and "unexpected (1): d" in msg
    assert "b: expected (3, 3), got (3, 4)" in msg
    io.validate(expected, expected, "x")


def test_flatten_roundtrip():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert io.unflatten(io.flatten(tree)) == tree


def test_precision_variant_ignored_beside_plain_file(tmp_path):
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    save_file({"w": np.zeros(2, np.float16)}, str(tmp_path / "diffusion_pytorch_model.fp16.safetensors"))
    np.testing.assert_array_equal(io.read_state_dict(str(tmp_path))["w"], np.ones(2))
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    assert io.read_state_dict(str(tmp_path))["w"].dtype == np.float16  # only the variant: use it
