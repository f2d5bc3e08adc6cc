"""CLIP image encoder: parity with transformers' CLIPVisionModelWithProjection, config parsing, outputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection, image_context

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Two tiny architectures: the SD/IP-Adapter encoders use quick_gelu; "gelu" covers the OpenCLIP-style ones.
TINY = {
    "quick_gelu": dict(hidden_size=32, intermediate_size=37, projection_dim=16, num_hidden_layers=2,
                       num_attention_heads=4, image_size=32, patch_size=8, hidden_act="quick_gelu"),
    "gelu": dict(hidden_size=24, intermediate_size=40, projection_dim=12, num_hidden_layers=3,
                 num_attention_heads=2, image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6),
}


def _tiny_torch_encoder(seed, **kwargs):
    """Random transformers encoder; every parameter perturbed so that LayerNorm scales/biases are not 1/0."""
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(TINY))
def parity_case(request, tmp_path_factory):
    from humandiff.weights.clip import load_image_encoder

    kwargs = TINY[request.param]
    model = _tiny_torch_encoder(0, **kwargs)
    folder = tmp_path_factory.mktemp(f"clip_{request.param}")
    model.save_pretrained(str(folder))
    pixels = torch.randn(2, 3, kwargs["image_size"], kwargs["image_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(pixel_values=pixels)
        pooled = model.vision_model(pixel_values=pixels).pooler_output
    module, params = load_image_encoder(str(folder))
    nhwc = jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))
    out = jax.jit(module.apply)({"params": params}, nhwc)
    return request.param, ref, pooled, out, (params, nhwc)


def test_parity_with_transformers(parity_case):
    # fp32 on both sides: differences are summation-order rounding only; the acceptance bound is 1e-4 relative.
    name, ref, pooled, out, _ = parity_case
    pairs = {
        "image_embeds": (ref.image_embeds, out.image_embeds),
        "last_hidden_state": (ref.last_hidden_state, out.last_hidden_state),
        "pooler_output": (pooled, out.pooler_output),
    }
    for field, (want, got) in pairs.items():
        want = want.numpy()
        got = np.asarray(got)
        assert got.shape == want.shape, field
        err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
        print(f"CLIP parity [{name}] {field}: max|d|={err:.3g} max|ref|={scale:.3g} rel={err / scale:.3g}")
        assert err <= 1e-4 * scale, (field, err, scale)


def test_bf16_compute_close_to_fp32(parity_case):
    name, _, _, out, (params, pixels) = parity_case
    bf16 = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY[name]), dtype=jnp.bfloat16)
    got = jax.jit(bf16.apply)({"params": params}, pixels).image_embeds
    assert got.dtype == jnp.bfloat16
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    rel = float(jnp.abs(got.astype(jnp.float32) - out.image_embeds).max() / jnp.abs(out.image_embeds).max())
    print(f"CLIP bf16 compute vs fp32 [{name}] image_embeds: rel max|d| {rel:.3g}")
    assert rel < 5e-2, rel


def test_wrong_input_shape_is_named():
    config = CLIPVisionConfig(**TINY["quick_gelu"])
    module = CLIPVisionModelWithProjection(config)
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\].*got shape \(1, 3, 32, 32\)"):
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 3, 32, 32)))


def test_config_defaults_match_transformers():
    ours = dataclasses.asdict(CLIPVisionConfig.from_dict({}))
    theirs = transformers.CLIPVisionConfig().to_dict()
    assert ours == {k: theirs[k] for k in ours}


def test_config_nested_clip_model_uses_top_level_projection_dim():
    full = transformers.CLIPConfig(
        vision_config=dict(hidden_size=48, num_attention_heads=3, patch_size=14, projection_dim=7),
        projection_dim=40,
    ).to_dict()
    config = CLIPVisionConfig.from_dict(full)
    assert (config.hidden_size, config.num_attention_heads, config.patch_size) == (48, 3, 14)
    assert config.projection_dim == 40  # CLIPModel's visual_projection is Linear(hidden, top-level projection_dim)
    del full["projection_dim"]
    assert CLIPVisionConfig.from_dict(full).projection_dim == 512  # CLIPConfig's default, not the nested 7


@pytest.mark.parametrize(
    "override, pattern",
    [
        ({"hidden_act": "relu"}, r"'hidden_act' = 'relu' is not supported"),
        ({"model_type": "siglip_vision_model"}, r"'model_type' = 'siglip_vision_model'"),
        ({"hidden_size": 30, "num_attention_heads": 4}, r"'num_attention_heads' = 4 does not divide 'hidden_size'"),
        ({"hidden_size": "768"}, r"'hidden_size' must be a positive integer"),
        ({"image_size": [224, 160]}, r"'image_size' = \[224, 160\]; only square"),
        ({"layer_norm_eps": "small"}, r"'layer_norm_eps'"),
        ({"vision_config": [1]}, r"'vision_config' must be an object"),
    ],
)
def test_config_errors_name_the_key(override, pattern):
    with pytest.raises(ValueError, match=r"my/config.json: .*" + pattern):
        CLIPVisionConfig.from_dict({"model_type": "clip_vision_model", **override}, source="my/config.json")


def test_config_accepts_square_lists_and_ignores_generic_keys():
    config = CLIPVisionConfig.from_dict(
        {"image_size": [64, 64], "patch_size": [16, 16], "attention_dropout": 0.1, "torch_dtype": "float16"}
    )
    assert (config.image_size, config.patch_size, config.num_positions) == (64, 16, 17)
    assert CLIPVisionConfig.from_dict(config.to_dict()) == config


def test_image_context_zeroes_dropped_entries():
    embeds = jnp.arange(6.0).reshape(2, 3) + 1
    ctx = image_context(embeds, jnp.array([True, False]))
    assert ctx.shape == (2, 1, 3)
    np.testing.assert_array_equal(ctx[:, 0], [[0, 0, 0], [4, 5, 6]])
    assert image_context(embeds).shape == (2, 1, 3)
