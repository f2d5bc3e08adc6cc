"""Parity of humandiff's AutoencoderKL with diffusers' torch `AutoencoderKL` (tiny random model, CPU, fp32).

Tolerance: max|delta| <= 1e-4 * max|ref| for the latent mean, logvar and the decoded image.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff.weights import load_vae  # noqa: E402

CONFIG = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16,
              scaling_factor=0.5)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**CONFIG).eval()
    folder = tmp_path_factory.mktemp("vae")
    model.save_pretrained(folder)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 16, 12)).astype(np.float32)
    z = rng.standard_normal((2, 4, 8, 6)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(torch.from_numpy(x)).latent_dist
        dec = model.decode(torch.from_numpy(z)).sample
    module, params = load_vae(str(folder))
    return module, params, x, z, dist.mean.numpy(), dist.logvar.numpy(), dec.numpy()


def _check(name, out_nhwc, ref):
    out = np.asarray(out_nhwc).transpose(0, 3, 1, 2)
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    print(f"VAE parity [{name}] max|d|={err:.3e} max|ref|={scale:.3e} rel={err / scale:.3e}")
    assert out.shape == ref.shape
    assert err <= 1e-4 * scale


def test_vae_encode_decode_match_diffusers(oracle):
    module, params, x, z, mean, logvar, dec = oracle
    assert module.scaling_factor == 0.5
    enc = jax.jit(lambda p, a: module.apply({"params": p}, a, method=module.encode))
    m, lv = enc(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
    _check("mean", m, mean)
    _check("logvar", lv, logvar)
    out = jax.jit(lambda p, a: module.apply({"params": p}, a, method=module.decode))(
        params, jnp.asarray(z.transpose(0, 2, 3, 1)))
    _check("decode", out, dec)


def test_vae_sample_uses_rng(oracle):
    module, params, x, *_ = oracle
    sample = jax.jit(lambda p, a, r: module.apply({"params": p}, a, r, method=module.sample))
    xs = jnp.asarray(x.transpose(0, 2, 3, 1))
    a, b = sample(params, xs, jax.random.PRNGKey(0)), sample(params, xs, jax.random.PRNGKey(1))
    assert a.shape == (2, 8, 6, 4)
    assert float(jnp.abs(a - b).max()) > 0
