"""Parity of humandiff's UNet with diffusers' torch `UNet2DConditionModel` (tiny random models, CPU, fp32).

Tolerance: max|delta| <= 1e-4 * max|ref|. Both sides run fp32; the remaining error is summation order in
convolutions/attention (measured ~1e-6 relative), well inside the bound.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff.weights import load_unet  # noqa: E402

CONFIGS = {
    # Conv projections, heads (2, 4) per level, non-square input.
    "conv_proj": dict(
        block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=(2, 4),
        norm_num_groups=8, use_linear_projection=False, sample_size=8),
    # Linear projections, three levels, heads (1, 2, 4), two transformer layers in the middle level, two layers per
    # block in the first level, and an input whose sides are not multiples of 4 (diffusers' forwarded upsample size).
    "linear_proj": dict(
        block_out_channels=(16, 32, 32), layers_per_block=(2, 1, 1),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
        attention_head_dim=(1, 2, 4), transformer_layers_per_block=(1, 2, 1), norm_num_groups=8,
        use_linear_projection=True, flip_sin_to_cos=False, freq_shift=1, sample_size=8),
}
SHAPES = {"conv_proj": (2, 16, 8), "linear_proj": (2, 10, 6)}


def _oracle(name, tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**CONFIGS[name]).eval()
    # Random init leaves some layers at zero (conv_out, proj_out in diffusers are not zero-init, but be safe):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    n, h, w = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4, h, w)).astype(np.float32)
    ctx = rng.standard_normal((n, 3, CONFIGS[name]["cross_attention_dim"])).astype(np.float32)
    t = np.array([10.0, 500.0], np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    return str(folder), x, t, ctx, ref


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unet_matches_diffusers(name, tmp_path_factory):
    folder, x, t, ctx, ref = _oracle(name, tmp_path_factory)
    module, params = load_unet(folder)
    out = jax.jit(module.apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), t, ctx)
    out = np.asarray(out).transpose(0, 3, 1, 2)
    err = float(np.abs(out - ref).max())
    scale = float(np.abs(ref).max())
    print(f"UNet parity [{name}] max|d|={err:.3e} max|ref|={scale:.3e} rel={err / scale:.3e}")
    assert out.shape == ref.shape
    assert err <= 1e-4 * scale
