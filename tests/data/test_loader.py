"""The grain pipeline: sampling from one video with a margin, per-process shards, resumable state, global
arrays, condition dropout, short videos, config checks.

Records are colour-coded: frame t of video v is flat (R, G, B) = (20 + 10 v, 10 + 10 t, 128), so a
loaded image tells which video and frame it came from (the crop/flip of a flat image is flat).
"""

import jax
import numpy as np
import pytest

from humandiff.data import loader

N_VIDEOS, T, H, W = 12, 16, 20, 28


def _record(v, t=T):
    frames = np.zeros((t, H, W, 3), np.uint8)
    frames[..., 0] = 20 + 10 * v
    frames[..., 1] = (10 + 10 * np.arange(t))[:, None, None]
    frames[..., 2] = 128
    rng = np.random.default_rng(v)
    kp = np.concatenate([rng.uniform(0, [W, H], (t, 133, 2)), np.ones((t, 133, 1))], -1).astype(np.float32)
    return {"video_id": f"v{v}", "frames": frames, "keypoints": kp, "fps": 8.0}


SOURCE = [_record(v) for v in range(N_VIDEOS)]


def _config(**kw):
    c = loader.default_config()
    c.resolution, c.batch_size, c.min_margin, c.num_threads, c.prefetch = (16, 16), 4, 5, 1, 2
    c.num_frames, c.stride, c.crop_scale = 3, 4, (0.5, 1.0)
    c.update(kw)
    return c


def _video(img):  # [..., H, W, 3] in [-1, 1] -> video index from R
    return np.rint(((img[..., 0].mean(axis=(-1, -2)) + 1) * 127.5 - 20) / 10).astype(int)


def _frame(img):
    return np.rint(((img[..., 1].mean(axis=(-1, -2)) + 1) * 127.5 - 10) / 10).astype(int)


def _iterator(c, seed=0, index=0, count=1, source=SOURCE, mesh=None):
    return loader.make_train_iterator(c, seed=seed, process_index=index, process_count=count, source=source,
                                      mesh=mesh)


def test_image_stage_ref_and_target_from_same_video_with_margin():
    it = _iterator(_config(batch_size=8))
    for _ in range(4):
        b = next(it)
        assert (_video(b["ref_image"]) == _video(b["tgt_image"])).all()
        gap = np.abs(_frame(b["ref_image"]) - _frame(b["tgt_image"]))
        assert (gap >= 5).all(), gap
        assert b["tgt_pose"].shape == (8, 16, 16, 3) and b["clip_image"].shape == (8, 224, 224, 3)


def test_fit_mode_keeps_reference_and_target_aligned():
    b = next(_iterator(_config(crop_mode="fit", crop_scale=(1.0, 1.0), flip=False, resolution=(28, 28))))
    # Frames are 20x28 (h x w): letterboxed into 28x28 at a random height, 20 rows of frame and 8 black
    # (-1) rows, the same rows in the reference and the target (one transform per sample).
    black_ref = (b["ref_image"] == -1.0).all(axis=(2, 3))  # [B, 28]
    black_tgt = (b["tgt_image"] == -1.0).all(axis=(2, 3))
    assert (black_ref == black_tgt).all() and (black_ref.sum(axis=1) == 8).all()


def test_video_stage_clip_stride_and_reference():
    b = next(_iterator(_config(stage="video", batch_size=4)))
    assert b["tgt_image"].shape == (4, 3, 16, 16, 3) and b["tgt_pose"].shape == (4, 3, 16, 16, 3)
    frames = _frame(b["tgt_image"])  # [B, F]
    assert (np.diff(frames, axis=1) == 4).all()
    vids = _video(b["tgt_image"])
    assert (vids == vids[:, :1]).all() and (_video(b["ref_image"]) == vids[:, 0]).all()


def test_two_processes_get_disjoint_shards_covering_the_data():
    c = _config(batch_size=2)
    seen = []
    for index in range(2):
        shard = loader.shard_options(index, 2)
        ds = loader.build_dataset(SOURCE, c, seed=3, shard=shard, num_epochs=1)
        seen.append([int(v) for b in ds for v in _video(b["ref_image"])])
    assert len(seen[0]) == len(seen[1]) == N_VIDEOS // 2
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(N_VIDEOS))
    # Without an explicit index, grain's ShardByJaxProcess decides (one process here).
    default = loader.shard_options(None, None)
    assert (default.shard_index, default.shard_count) == (jax.process_index(), jax.process_count())
    # make_train_iterator gives each process batch_size / process_count examples.
    assert next(_iterator(c, index=1, count=2))["ref_image"].shape[0] == 1


def test_state_restore_gives_identical_next_batch():
    c = _config()
    it = _iterator(c, seed=7)
    next(it), next(it)
    state = it.get_state()
    want = next(it)
    fresh = _iterator(c, seed=7)
    fresh.set_state(state)
    got = next(fresh)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert not all(np.array_equal(next(_iterator(c, seed=8))[k], want[k]) for k in want)


def test_orbax_checkpoint_of_iterator(tmp_path):
    grain = pytest.importorskip("grain")
    ocp = pytest.importorskip("orbax.checkpoint")
    c = _config()
    it = _iterator(c, seed=1)
    next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        want = next(it)
        fresh = _iterator(c, seed=1)
        mngr.restore(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    got = next(fresh)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_global_arrays_on_a_mesh():
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    b = next(_iterator(_config(batch_size=8), mesh=mesh))
    assert isinstance(b["ref_image"], jax.Array) and b["ref_image"].shape == (8, 16, 16, 3)
    assert b["drop_cond"].shape == (8,) and b["drop_cond"].dtype == np.bool_
    assert b["ref_image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(b["ref_image"].addressable_shards) == 8
    with pytest.raises(ValueError, match="batch_size=4 is not divisible by the 8 devices"):
        _iterator(_config(batch_size=4), mesh=mesh)
    data_only = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))  # replicated over fsdp
    b = next(loader.make_train_iterator(_config(batch_size=4), seed=0, process_index=0, process_count=1,
                                        source=SOURCE, sharding=data_only))
    assert b["tgt_image"].sharding == data_only and b["tgt_image"].shape == (4, 16, 16, 3)


def test_condition_dropout_rate():
    it = _iterator(_config(batch_size=8, drop_prob=0.5))
    drops = np.concatenate([next(it)["drop_cond"] for _ in range(8)])
    assert 0.3 < drops.mean() < 0.7
    assert not next(_iterator(_config(drop_prob=0.0)))["drop_cond"].any()


def test_short_video_raises_or_is_skipped():
    source = [_record(0, t=4), _record(1)]
    with pytest.raises(ValueError, match="video v0: 4 frames cannot give a pair 5 frames apart.*min_frames"):
        for _ in range(3):
            next(_iterator(_config(batch_size=2), source=source))
    b = next(_iterator(_config(batch_size=2, skip_short=True), source=source))
    assert (_video(b["ref_image"]) == 1).all()


def test_pose_frame_mismatch_in_record_is_an_error():
    bad = dict(_record(0), keypoints=_record(0)["keypoints"][:-1])
    with pytest.raises(ValueError, match=r"video v0: 15 keypoint frames for 16 frames"):
        next(_iterator(_config(batch_size=1), source=[bad]))


@pytest.mark.parametrize("field, value, message", [
    ("stage", "audio", "data.stage='audio'"),
    ("batch_size", 3, "batch_size=3 must be a positive multiple of the process count 2"),
    ("crop_scale", (0.0, 1.0), "crop_scale"),
    ("drop_prob", 1.5, "drop_prob=1.5"),
    ("crop_mode", "zoom", "data.crop_mode='zoom'"),
])
def test_config_errors_name_the_field(field, value, message):
    c = _config()
    setattr(c, field, value)
    with pytest.raises(ValueError, match=message):
        loader.validate_config(c, process_count=2)


def test_synthetic_source_default():
    c = _config(source="synthetic", min_margin=2, batch_size=2)
    c.synthetic.update(num_videos=3, num_frames=6, height=32, width=24)
    b = next(loader.make_train_iterator(c, seed=0, process_index=0, process_count=1))
    assert b["ref_image"].shape == (2, 16, 16, 3) and -1.0 <= b["ref_image"].min() <= b["ref_image"].max() <= 1.0


@pytest.mark.slow  # starts two worker processes (~7 s on a loaded 2-core machine)
def test_worker_processes_give_the_same_stream_and_restore(tmp_path):
    """num_workers > 0 (grain mp_prefetch) over a built dataset (the frame-record source is sent to the
    workers): batches are deterministic and the state restores exactly."""
    from data_pipelines import build

    out = build.build("synthetic", str(tmp_path), num_videos=4, num_test_videos=0, num_frames=8, height=32,
                      width=32)
    c = _config(num_workers=2, source="tfds", data_dir=out, min_margin=2)
    it = loader.make_train_iterator(c, seed=5, process_index=0, process_count=1)
    first = next(it)
    state = it.get_state()
    want = next(it)
    it.close()
    fresh = loader.make_train_iterator(c, seed=5, process_index=0, process_count=1)
    fresh.set_state(state)
    got = next(fresh)
    fresh.close()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert first["ref_image"].shape == (4, 16, 16, 3)
