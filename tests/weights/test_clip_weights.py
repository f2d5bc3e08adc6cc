"""CLIP image-encoder weights: key map both ways, exact round trip, export to transformers, clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from humandiff.weights import clip as wclip
from humandiff.weights.io import WeightsError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, intermediate_size=37, projection_dim=16, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)


def _perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny random transformers encoder, its torch model and a test input (NCHW)."""
    torch.manual_seed(0)
    model = _perturb(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY)), 0)
    folder = tmp_path_factory.mktemp("clip_encoder")
    model.save_pretrained(str(folder))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return folder, model, pixels


def _nhwc(pixels):
    return jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))


def test_key_map_covers_every_key_both_ways(tiny):
    _, model, _ = tiny
    state = model.state_dict()
    config = wclip.CLIPVisionConfig(**TINY)
    expected = wclip.expected_torch_shapes(config)
    assert set(expected) == set(state)
    assert all(expected[k] == tuple(v.shape) for k, v in state.items())
    for key in state:
        assert wclip.flax_to_torch_key(wclip.torch_to_flax_key(key)) == key
    assert wclip.torch_to_flax_key("vision_model.encoder.layers.1.self_attn.q_proj.weight") == (
        "vision_model/encoder/layers_1/self_attn/q_proj/kernel"
    )
    assert wclip.torch_to_flax_key("vision_model.pre_layrnorm.weight") == "vision_model/pre_layrnorm/scale"
    assert wclip.torch_to_flax_key("vision_model.embeddings.position_embedding.weight").endswith("/embedding")


def test_round_trip_flax_torch_flax_is_bit_identical(tiny):
    folder, model, _ = tiny
    _, params = wclip.load_image_encoder(str(folder))
    exported = wclip.image_encoder_to_torch(params)
    original = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(exported) == set(original)
    for key, value in exported.items():
        assert value.dtype == original[key].dtype and np.array_equal(value, original[key]), key
    again = wclip.state_dict_to_params(exported, wclip.load_config(str(folder)))
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_flatten_with_path(again)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b):
        assert a.dtype == b.dtype and np.array_equal(a, b), path


def test_export_loads_in_transformers_with_same_outputs(tiny, tmp_path):
    folder, model, pixels = tiny
    module, params = wclip.load_image_encoder(str(folder))
    exported = {k: torch.from_numpy(v) for k, v in wclip.image_encoder_to_torch(params).items()}
    fresh = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY)).eval()
    fresh.load_state_dict(exported, strict=True)
    wclip.save_image_encoder(str(tmp_path / "out"), module.config, params)
    reloaded = transformers.CLIPVisionModelWithProjection.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        want = model(pixel_values=pixels).image_embeds
        for other in (fresh, reloaded):
            assert torch.equal(other(pixel_values=pixels).image_embeds, want)
    ours = module.apply({"params": params}, _nhwc(pixels)).image_embeds
    assert float(np.abs(np.asarray(ours) - want.numpy()).max()) <= 1e-4 * float(want.abs().max())


def test_full_clip_model_folder_loads_vision_tower(tmp_path):
    vision = dict(TINY, projection_dim=5)  # ignored: CLIPModel projects to the top-level projection_dim
    text = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
                bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=8)
    torch.manual_seed(3)
    config = transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=12)
    model = _perturb(transformers.CLIPModel(config), 3)
    model.save_pretrained(str(tmp_path))
    module, params = wclip.load_image_encoder(str(tmp_path))
    assert module.config.projection_dim == 12
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model.get_image_features(pixel_values=pixels)
    want = (want if isinstance(want, torch.Tensor) else want.pooler_output).numpy()
    got = np.asarray(module.apply({"params": params}, _nhwc(pixels)).image_embeds)
    err = float(np.abs(got - want).max())
    print(f"CLIPModel image features parity: max|d|={err:.3g} max|ref|={np.abs(want).max():.3g}")
    assert err <= 1e-4 * float(np.abs(want).max())


def test_fp16_file_and_legacy_position_ids_buffer(tiny):
    # Released encoders are often fp16 (IP-Adapter) and files from transformers < 4.31 hold `position_ids`.
    folder, model, _ = tiny
    state = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
    params = wclip.state_dict_to_params(state, wclip.load_config(str(folder)))
    assert "position_ids" not in str(jax.tree_util.tree_structure(params))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    exported = wclip.image_encoder_to_torch(params)
    assert all(np.array_equal(exported[k], v.astype(np.float32)) for k, v in state.items() if k in exported)


def _copy_folder(src, dst, config=None, state=None):
    dst.mkdir()
    (dst / "config.json").write_text(config if config is not None else (src / "config.json").read_text())
    save_file(state if state is not None else load_file(str(src / "model.safetensors")), str(dst / "model.safetensors"))
    return dst


def test_missing_folder_and_files(tiny, tmp_path):
    folder, _, _ = tiny
    with pytest.raises(WeightsError, match=r"image encoder folder not found: .*nowhere"):
        wclip.load_image_encoder(str(tmp_path / "nowhere"))
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    save_file(load_file(str(folder / "model.safetensors")), str(no_config / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"config file not found: .*no_config/config.json"):
        wclip.load_image_encoder(str(no_config))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(WeightsError, match=r"no weight file .* in folder .*no_weights"):
        wclip.load_image_encoder(str(no_weights))


def test_malformed_and_unsupported_config(tiny, tmp_path):
    folder, _, _ = tiny
    bad_json = _copy_folder(folder, tmp_path / "bad_json", config='{"hidden_size": 32,')
    with pytest.raises(WeightsError, match=r"malformed JSON in .*bad_json/config.json"):
        wclip.load_image_encoder(str(bad_json))
    cfg = json.loads((folder / "config.json").read_text())
    bad_act = _copy_folder(folder, tmp_path / "bad_act", config=json.dumps(dict(cfg, hidden_act="swish")))
    with pytest.raises(ValueError, match=r"bad_act/config.json: .*'hidden_act' = 'swish'"):
        wclip.load_image_encoder(str(bad_act))


def test_shape_mismatch_and_missing_keys_are_named(tiny, tmp_path):
    folder, _, _ = tiny
    state = load_file(str(folder / "model.safetensors"))
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    state[key] = np.zeros((36, 32), np.float32)
    del state["visual_projection.weight"]
    state["vision_model.extra.weight"] = np.zeros(3, np.float32)
    broken = _copy_folder(folder, tmp_path / "broken", state=state)
    with pytest.raises(WeightsError) as info:
        wclip.load_image_encoder(str(broken))
    message = str(info.value)
    assert "broken" in message
    assert f"{key}: expected (37, 32), got (36, 32)" in message
    assert "missing (1): visual_projection.weight" in message
    assert "unexpected (1): vision_model.extra.weight" in message
    # A config that disagrees with the weights is reported the same way.
    cfg = json.loads((folder / "config.json").read_text())
    wrong = _copy_folder(folder, tmp_path / "wrong", config=json.dumps(dict(cfg, intermediate_size=40)))
    with pytest.raises(WeightsError, match=r"mlp.fc1.weight: expected \(40, 32\), got \(37, 32\)"):
        wclip.load_image_encoder(str(wrong))


def test_pickle_refused_unless_opted_in(tiny, tmp_path):
    folder, model, pixels = tiny
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), str(pickled / "pytorch_model.bin"))
    with pytest.raises(WeightsError, match=r"pytorch_model.bin is a pickle file"):
        wclip.load_image_encoder(str(pickled))
    module, params = wclip.load_image_encoder(str(pickled), allow_pickle=True)
    _, reference = wclip.load_image_encoder(str(folder))
    assert jax.tree.all(jax.tree.map(np.array_equal, params, reference))
    assert module.apply({"params": params}, _nhwc(pixels)).image_embeds.shape == (2, 16)


def test_vit_l14_shapes_match_transformers_without_allocating():
    # The image_encoder of SD image variations / IP-Adapter SD1.5 (ViT-L/14 and ViT-H/14): every key and shape,
    # compared with a torch model on the meta device (nothing is allocated on either side).
    for kwargs in (
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
             projection_dim=768),
        dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
             projection_dim=1024, hidden_act="gelu"),
    ):
        with torch.device("meta"):
            model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**kwargs))
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = wclip.expected_torch_shapes(wclip.CLIPVisionConfig(**kwargs))
        assert got == want
        count = sum(int(np.prod(s)) for s in got.values())
        assert count == sum(p.numel() for p in model.parameters())
        print(f"CLIP {kwargs['hidden_size']}-wide: {count:,} parameters, same as transformers")
