"""SCD equivalences on a tiny random UNet (CPU, fp32).

- two-pass (reference cache, then target) == joint single pass with the block-causal mask: outputs and
  gradients w.r.t. every UNet and pose-encoder parameter (relative error <= 1e-5);
- causal: the reference half ignores the target; full: it does not;
- empty reference (zero-length cache, or ref_keep all False) == plain UNet; pose encoder is zero at init;
- video: one cache broadcast over frames == the cache materialised per frame.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.models import scd
from humandiff.models.init import numpy_init
from humandiff.models.pose_encoder import PoseEncoder
from humandiff.models.unet import UNet2DConditionModel

TINY = dict(block_out_channels=(16,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=8, attention_head_dim=2,
            norm_num_groups=8)
B, H, W = 2, 8, 6


@pytest.fixture(scope="module")
def setup():
    unet = UNet2DConditionModel(**TINY)
    pose_enc = PoseEncoder(out_channels=16, block_out_channels=(4, 8))
    # NumPy data: every eager jax.random call compiles its own program (seconds each on a loaded CPU).
    rng = np.random.default_rng(0)
    z_ref, z_tgt = (jnp.asarray(rng.standard_normal((B, H, W, 4), np.float32)) for _ in range(2))
    ctx = jnp.asarray(rng.standard_normal((B, 1, 8), np.float32))
    ref_pose, tgt_pose = (jnp.asarray(rng.uniform(0, 1, (B, 2 * H, 2 * W, 3)).astype(np.float32)) for _ in range(2))
    params = numpy_init(unet, z_tgt, jnp.zeros((B,)), ctx)  # jit(unet.init) compiles for ~30 s on CPU
    # An "rbg" key: the threefry default makes this tiny init compile ~6x slower on a CPU.
    pose_params0 = jax.jit(pose_enc.init)(jax.random.key(0, impl="rbg"), tgt_pose)["params"]
    pose_params = numpy_init(pose_enc, tgt_pose, seed=1)
    data = dict(z_ref=z_ref, z_tgt=z_tgt, ctx=ctx, ref_pose=ref_pose, tgt_pose=tgt_pose, t=jnp.array([3.0, 700.0]))
    # pose_params: random (non-zero) weights so that the pose path contributes.
    return unet, pose_enc, params, pose_params0, pose_params, data


def _two_pass(unet, pose_enc, params, pose_params, d, ref_keep):
    feats = lambda pose: pose_enc.apply({"params": pose_params}, pose)  # noqa: E731
    cache = scd.reference_pass(unet, params, d["z_ref"], d["ctx"], pose_features=feats(d["ref_pose"]))
    return scd.target_pass(unet, params, cache, d["z_tgt"], d["t"], d["ctx"], pose_features=feats(d["tgt_pose"]),
                           ref_keep=ref_keep)


def _joint(unet, pose_enc, params, pose_params, d, ref_keep):
    feats = lambda pose: pose_enc.apply({"params": pose_params}, pose)  # noqa: E731
    return scd.joint_pass(unet, params, d["z_ref"], d["z_tgt"], d["t"], d["ctx"],
                          ref_pose_features=feats(d["ref_pose"]), pose_features=feats(d["tgt_pose"]),
                          ref_keep=ref_keep)[1]


def _rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def _tree_rel(a, b):
    """max |a - b| over every leaf of two gradient trees, over the largest |b|."""
    errs = jax.tree_util.tree_map(lambda x, y: float(jnp.abs(x - y).max()), a, b)
    return max(jax.tree_util.tree_leaves(errs)) / max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(b))


def test_two_pass_equals_joint_outputs_and_grads(setup):
    unet, pose_enc, params, _, pose_params, d = setup
    ref_keep = jnp.array([True, False])
    weight = jnp.asarray(np.random.default_rng(1).standard_normal(d["z_tgt"].shape, np.float32))

    def loss(fn):
        def f(p, pp):
            out = fn(unet, pose_enc, p, pp, d, ref_keep)
            return jnp.sum(out * weight), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    (_, out2), g2 = loss(_two_pass)(params, pose_params)
    (_, out1), g1 = loss(_joint)(params, pose_params)
    out_err, grad_err = _rel(out2, out1), _tree_rel(g2, g1)
    print(f"SCD two-pass vs joint: output rel err {out_err:.2e}, grad rel err (max over params) {grad_err:.2e}")
    assert out_err <= 1e-5
    assert grad_err <= 1e-5
    # The pose encoder and reference path both receive gradient through the cache.
    assert float(jnp.abs(g1[1]["conv_out"]["kernel"]).max()) > 0


def test_reference_pass_refuses_full_interaction(setup):
    _, _, params, _, _, d = setup
    unet = UNet2DConditionModel(**TINY, interaction="full")
    with pytest.raises(ValueError, match="interaction='full'.*joint form"):
        scd.reference_pass(unet, params, d["z_ref"], d["ctx"])


@pytest.mark.parametrize("interaction,changes", [("causal", False), ("full", True)])
def test_reference_half_sees_target_only_under_full(setup, interaction, changes):
    _, _, params, _, _, d = setup
    unet = UNet2DConditionModel(**TINY, interaction=interaction)
    run = jax.jit(lambda zt: scd.joint_pass(unet, params, d["z_ref"], zt, d["t"], d["ctx"])[0])
    a = run(d["z_tgt"])
    b = run(d["z_tgt"] + 1.0)
    diff = float(jnp.abs(a - b).max())
    assert (diff > 1e-4) == changes, diff
    if not changes:
        assert diff == 0.0


def test_pose_encoder_zero_at_init_and_empty_reference_is_plain_unet(setup):
    unet, pose_enc, params, pose_params0, _, d = setup
    feats = pose_enc.apply({"params": pose_params0}, d["tgt_pose"])
    assert feats.shape == (B, H, W, 16)
    assert not np.any(np.asarray(feats))
    plain = jax.jit(unet.apply)({"params": params}, d["z_tgt"], d["t"], d["ctx"])
    cache = jax.jit(lambda: scd.reference_pass(unet, params, d["z_ref"], d["ctx"]))()
    target = jax.jit(lambda c, keep: scd.target_pass(unet, params, c, d["z_tgt"], d["t"], d["ctx"],
                                                    pose_features=feats, ref_keep=keep))
    empty = target(scd.empty_cache(cache), jnp.ones((B,), bool))
    dropped = target(cache, jnp.zeros((B,), bool))
    np.testing.assert_allclose(empty, plain, rtol=0, atol=1e-5 * float(jnp.abs(plain).max()))
    np.testing.assert_allclose(dropped, plain, rtol=0, atol=1e-5 * float(jnp.abs(plain).max()))
    kept = target(cache, jnp.ones((B,), bool))
    assert float(jnp.abs(kept - plain).max()) > 1e-4  # the reference does change the target


def test_video_frames_broadcast_over_one_cache(setup):
    unet, _, params, _, _, d = setup
    frames = 3
    cache = jax.jit(lambda: scd.reference_pass(unet, params, d["z_ref"], d["ctx"]))()
    z = jnp.asarray(np.random.default_rng(5).standard_normal((B * frames, H, W, 4), np.float32))
    ctx = jnp.repeat(d["ctx"], frames, axis=0)
    keep = jnp.array([True, True, False, True, False, True])
    run = jax.jit(lambda c: scd.target_pass(unet, params, c, z, 50.0, ctx, ref_keep=keep, num_frames=frames))
    shared = run(cache)
    copied = run(jax.tree_util.tree_map(lambda x: jnp.repeat(x, frames, axis=0), cache))
    assert _rel(shared, copied) <= 1e-5


@pytest.mark.slow
def test_splash_interpret_path_matches_xla(setup):
    """The TPU kernel path (Pallas splash in interpret mode) through the whole UNet equals the XLA path."""
    _, _, params, _, _, d = setup
    outs = []
    for impl in ("xla", "interpret"):
        unet = UNet2DConditionModel(**TINY, attention_impl=impl)

        def run(p, unet=unet):
            cache = scd.reference_pass(unet, p, d["z_ref"], d["ctx"])
            two = scd.target_pass(unet, p, cache, d["z_tgt"], d["t"], d["ctx"], ref_keep=jnp.array([True, False]))
            return two, scd.joint_pass(unet, p, d["z_ref"], d["z_tgt"], d["t"], d["ctx"])[1]

        outs.append(jax.jit(run)(params))
    for a, b in zip(*outs):
        assert _rel(b, a) <= 1e-5


def _perturbed(params, seed):
    """Another UNet's parameters of the same shapes (the separate reference UNet after some training)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.asarray(rng.standard_normal(x.shape, np.float32)), params)


def _two_pass_separate(unet, pose_enc, ref_params, params, pose_params, d, ref_keep):
    feats = lambda pose: pose_enc.apply({"params": pose_params}, pose)  # noqa: E731
    cache = scd.reference_pass(unet, ref_params, d["z_ref"], d["ctx"], pose_features=feats(d["ref_pose"]))
    return scd.target_pass(unet, params, cache, d["z_tgt"], d["t"], d["ctx"], pose_features=feats(d["tgt_pose"]),
                           ref_keep=ref_keep)


def _joint_separate(unet, pose_enc, ref_params, params, pose_params, d, ref_keep):
    feats = lambda pose: pose_enc.apply({"params": pose_params}, pose)  # noqa: E731
    return scd.joint_pass(unet, params, d["z_ref"], d["z_tgt"], d["t"], d["ctx"],
                          ref_pose_features=feats(d["ref_pose"]), pose_features=feats(d["tgt_pose"]),
                          ref_keep=ref_keep, ref_params=ref_params)[1]


def test_separate_reference_unet_two_pass_equals_joint_outputs_and_grads(setup):
    """model.reference_net="separate": the reference pass runs its own UNet; the two forms still agree, and the
    gradients reach both UNets (each through its own pass)."""
    unet, pose_enc, params, _, pose_params, d = setup
    ref_params = _perturbed(params, 7)
    ref_keep = jnp.array([True, False])
    weight = jnp.asarray(np.random.default_rng(1).standard_normal(d["z_tgt"].shape, np.float32))

    def loss(fn):
        def f(rp, p, pp):
            out = fn(unet, pose_enc, rp, p, pp, d, ref_keep)
            return jnp.sum(out * weight), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    (_, out2), g2 = loss(_two_pass_separate)(ref_params, params, pose_params)
    (_, out1), g1 = loss(_joint_separate)(ref_params, params, pose_params)
    out_err, grad_err = _rel(out2, out1), _tree_rel(g2, g1)
    print(f"separate reference UNet, two-pass vs joint: output rel err {out_err:.2e}, grad rel err {grad_err:.2e}")
    assert out_err <= 1e-5
    assert grad_err <= 1e-5
    # The reference UNet's gradient comes only through the cache: its last layer (conv_out) gets none, its
    # self-attention keys do; the target UNet's conv_out does.
    assert float(jnp.abs(g1[0]["conv_out"]["kernel"]).max()) == 0.0
    key_grad = g1[0]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_k"]["kernel"]
    assert float(jnp.abs(key_grad).max()) > 0
    assert float(jnp.abs(g1[1]["conv_out"]["kernel"]).max()) > 0


def test_separate_reference_pass_reads_its_own_parameters(setup):
    unet, pose_enc, params, _, pose_params, d = setup
    keep = jnp.array([True, True])
    run = jax.jit(lambda rp, p: _two_pass_separate(unet, pose_enc, rp, p, pose_params, d, keep))
    shared = run(params, params)
    own = run(_perturbed(params, 7), params)  # only the reference UNet differs
    assert _rel(own, shared) > 1e-3
    np.testing.assert_array_equal(shared, jax.jit(lambda p: _two_pass(unet, pose_enc, p, pose_params, d, keep))(params))
    # The joint form with the same parameters in both streams is the shared joint pass.
    joint = jax.jit(lambda rp, p: _joint_separate(unet, pose_enc, rp, p, pose_params, d, keep))(params, params)
    assert _rel(joint, jax.jit(lambda p: _joint(unet, pose_enc, p, pose_params, d, keep))(params)) <= 1e-6


@pytest.mark.parametrize("interaction,changes", [("causal", False), ("full", True)])
def test_separate_reference_stream_sees_target_only_under_full(setup, interaction, changes):
    _, _, params, _, _, d = setup
    unet = UNet2DConditionModel(**TINY, interaction=interaction)
    ref_params = _perturbed(params, 3)
    run = jax.jit(lambda zt: scd.joint_pass(unet, params, d["z_ref"], zt, d["t"], d["ctx"], ref_params=ref_params)[0])
    diff = float(jnp.abs(run(d["z_tgt"]) - run(d["z_tgt"] + 1.0)).max())
    assert (diff > 1e-4) == changes, diff
