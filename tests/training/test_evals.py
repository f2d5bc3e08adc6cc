"""The trainer's evaluators (`config.evals`): held-out data from the run's own source and split, the PSNRs and the
held-out loss, the files and events they write, and start-up checks of the registry."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from data_pipelines import build, fake_layouts
from humandiff import config_lib
from humandiff.data import pose_render, synthetic
from humandiff.training import evals, modeling, optim, step as step_lib
from humandiff.training.writer import MetricWriter


def test_psnr_peak_is_the_signed_range_and_a_mask_counts_only_its_pixels():
    a = np.zeros((2, 4, 4, 3), np.float32)
    assert evals.psnr(a, a + 0.2) == pytest.approx(10 * np.log10(4 / 0.04))
    assert evals.psnr(a + 3.0, a + 1.0) > 100  # samples are clipped to [-1, 1] first
    b = a.copy()
    b[:, :2] = 0.5  # top half wrong by 0.5, bottom half right
    mask = np.zeros((2, 4, 4, 1), np.float32)
    mask[:, :2] = 1.0
    assert evals.psnr(a, b, mask) == pytest.approx(10 * np.log10(4 / 0.25))
    assert evals.psnr(a, b) == pytest.approx(10 * np.log10(4 / 0.125))  # unmasked: half the pixels are right


def test_synthetic_held_out_identities_are_not_training_ones():
    config = config_lib.load("configs/tiny_test.py")
    inputs, truth = evals.held_out(config, "test", num_videos=2, num_frames=3)
    h, w = config.data.resolution
    assert inputs["ref_image"].shape == (2, h, w, 3) and truth.shape == (2, 3, h, w, 3)
    assert inputs["poses"].shape == (2, 3, h, w, 3) and inputs["ref_pose"].shape == (2, h, w, 3)
    # Frame 0 is the reference; targets spread over a training-length video (16 frames: stride 5).
    syn = config.data.synthetic
    test = synthetic.SyntheticSource(2, 16, h, w, seed=syn.seed, split="test", travel=syn.travel)
    train = synthetic.SyntheticSource(2, 1, h, w, seed=syn.seed)
    for i in range(2):
        video = test[i]
        np.testing.assert_allclose(truth[i], video["frames"][[1, 6, 11]] / 127.5 - 1, atol=2e-7)
        np.testing.assert_allclose(inputs["ref_image"][i], video["frames"][0] / 127.5 - 1, atol=2e-7)
        want = pose_render.render_pose(video["keypoints"][6], h, w) / 255.0
        np.testing.assert_array_equal(inputs["poses"][i, 1], want.astype(np.float32))
        assert not np.array_equal(train[i]["frames"][0] / 127.5 - 1, inputs["ref_image"][i])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build output root with ubc_fashion/1.0.0 (2 train, 1 test video of 6 frames, 24x16) and viton_hd/1.0.0."""
    root = tmp_path_factory.mktemp("evals")
    raw = fake_layouts.write_ubc_fashion(str(root / "raw_ubc"), num_train=2, num_test=1, num_frames=6, height=24,
                                         width=16)
    build.build("ubc_fashion", str(root / "out"), raw)
    raw = fake_layouts.write_viton_hd(str(root / "raw_viton"), num_train=2, num_test=2, height=16, width=16)
    build.build("viton_hd", str(root / "out"), raw)
    return str(root / "out")


def test_a_dataset_run_holds_out_its_test_split(built):
    """A TFDS run's held-out examples are its dataset's test videos (built from the raw test split), not training
    ones: frames within JPEG/H.264 error of the raw test frames, and far from the training videos'."""
    config = config_lib.load("configs/tiny_test.py")
    config.data.update(dict(source="tfds", data_dir=built, name="ubc_fashion", resolution=(24, 16)))
    config_lib.validate(config)
    inputs, truth = evals.held_out(config, "test", num_videos=1, num_frames=2)
    raw_test = synthetic.SyntheticSource(1, 6, 24, 16, 0, split="test")[0]
    raw_train = synthetic.SyntheticSource(2, 6, 24, 16, 0, split="train")
    signed = lambda x: x / 127.5 - 1.0  # noqa: E731
    # Measured: 23.8 dB against the test video (a tiny H.264 + JPEG round trip), 7.3 and 7.7 against the training ones.
    assert evals.psnr(truth[0], signed(raw_test["frames"][[1, 3]])) > 20  # targets 1 and 3 of 6 (stride 2)
    assert evals.psnr(inputs["ref_image"][0], signed(raw_test["frames"][0])) > 20
    for i in range(2):
        assert evals.psnr(truth[0], signed(raw_train[i]["frames"][[1, 3]])) < 12
    # The poses (from the stored keypoints, lossless) pin which frames were taken.
    for j, t in enumerate((1, 3)):
        want = pose_render.render_pose(raw_test["keypoints"][t], 24, 16) / 255.0
        np.testing.assert_array_equal(inputs["poses"][0, j], want.astype(np.float32))
    with pytest.raises(ValueError, match="split 'test' of the run's data has 1 examples"):
        evals.held_out(config, "test", num_videos=2, num_frames=2)
    with pytest.raises(ValueError, match="6 frames; a held-out example needs 1 reference \\+ 8"):
        evals.held_out(config, "test", num_videos=1, num_frames=8)


def test_a_tryon_run_holds_out_paired_test_pairs(built):
    """Try-on: garment as reference, the person as truth and as the kept pixels, with the agnostic mask."""
    config = config_lib.load(f"configs/sd15_tryon.py:runlocal,data_dir={built}")
    config.data.resolution, config.data.name = (16, 16), "viton_hd"
    config_lib.validate(config)
    assert config.evals.heldout.split == "test_paired" and config.evals.heldout.num_frames == 1
    inputs, truth = evals.held_out(config, "test_paired", num_videos=2, num_frames=1)
    assert truth.shape == (2, 1, 16, 16, 3) and inputs["poses"].shape == (2, 1, 16, 16, 3)
    np.testing.assert_array_equal(inputs["tryon_person"], truth[:, 0])
    raw = os.path.join(os.path.dirname(built), "raw_viton", "test")
    read = lambda kind, i: np.asarray(Image.open(os.path.join(raw, kind, f"{i:05d}_00.jpg")), np.float32)  # noqa: E731
    found = []
    for i in range(2):  # the built split's record order is TFDS's; find each example's raw pair
        j = max(range(2), key=lambda k: evals.psnr(truth[i, 0], read("image", k) / 127.5 - 1))
        found.append(j)
        assert evals.psnr(truth[i, 0], read("image", j) / 127.5 - 1) > 30  # its own garment: a paired example
        assert evals.psnr(inputs["ref_image"][i], read("cloth", j) / 127.5 - 1) > 30
        mask = np.asarray(Image.open(os.path.join(raw, "agnostic-mask", f"{j:05d}_00_mask.png"))) > 127
        np.testing.assert_array_equal(inputs["tryon_mask"][i, ..., 0], mask.astype(np.float32))
    assert sorted(found) == [0, 1]


def _tiny_model(num_videos: int):
    """`(config, models, params, (trainable, frozen))`: the tiny config sampling `num_videos` x 2 frames in 2 steps."""
    config = config_lib.load("configs/tiny_test.py")
    config.evals.heldout.num_videos, config.evals.heldout.num_frames, config.sample.num_steps = num_videos, 2, 2
    models, _ = modeling.build(config)
    params = jax.jit(lambda k: modeling.init_params(models, config, k))(jax.random.key(0))
    mask = optim.trainable_mask(params, tuple(config.optim.trainable), tuple(config.optim.frozen))
    return config, models, params, optim.split(params, mask)


def test_run_writes_media_metrics_and_events(tmp_path):
    config, models, params, (trainable, frozen) = _tiny_model(num_videos=2)
    evaluators = evals.build(models, config)
    assert sorted(evaluators) == ["heldout", "loss"]
    writer = MetricWriter(str(tmp_path / "tb"))
    results = evals.run(evaluators, {"params": trainable, "ema": {}}, frozen, 7, str(tmp_path), writer)
    writer.close()

    metrics = results["heldout"]
    inputs, truth = evals.held_out(config, "test", 2, 2)
    copy = np.broadcast_to(inputs["ref_image"][:, None], truth.shape)
    assert metrics["psnr_copy_ref"] == pytest.approx(evals.psnr(copy, truth))
    assert all(np.isfinite(v) for v in metrics.values()) and set(metrics) == {
        "psnr_scd", "psnr_no_ref", "psnr_copy_ref", "se_vs_copy_ref", "se_vs_no_ref", "ssim_scd", "l1_scd"}
    stem = tmp_path / "evals" / "heldout" / "step_0000007"
    with open(f"{stem}.json") as fh:
        record = json.load(fh)
    per_video = record.pop("per_video")
    assert record == dict(metrics, step=7, num_videos=2, num_frames=2)
    # SSIM and L1 of the same samples, recomputed from the PNG's sample and truth columns (uint8) with scikit-image
    # and numpy: SSIM agrees to 1e-6 (the evaluator scores the same uint8 frames), L1 to the uint8 rounding.
    h, w = config.data.resolution
    grid = np.asarray(Image.open(f"{stem}.png").convert("RGB"))
    cells = grid.reshape(2, h, 2, 4, w, 3).transpose(2, 0, 3, 1, 4, 5)  # [frame, video, column, H, W, 3]
    sample, true = cells[:, :, 2], cells[:, :, 3]
    for i in range(2):
        ssim = np.mean([structural_similarity(sample[f, i], true[f, i], channel_axis=-1, data_range=255)
                        for f in range(2)])
        assert per_video["ssim_scd"][i] == pytest.approx(ssim, abs=1e-6)
        l1 = np.mean(np.abs(sample[:, i].astype(float) - true[:, i])) / 255
        assert per_video["l1_scd"][i] == pytest.approx(l1, abs=2.5e-3)
        assert per_video["psnr_scd"][i] == pytest.approx(evals.psnr(sample[:, i] / 127.5 - 1, truth[i]), abs=0.1)
    assert metrics["ssim_scd"] == pytest.approx(np.mean(per_video["ssim_scd"]))
    # Frames side by side; per frame the videos stacked, each row reference | pose | sample | truth.
    assert Image.open(f"{stem}.png").size == (2 * 4 * w, 2 * h)
    assert os.path.getsize(f"{stem}.mp4") > 0
    with open(tmp_path / "evals" / "loss" / "step_0000007.json") as fh:
        assert json.load(fh) == dict(results["loss"], step=7)
    tags = _event_tags(glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))[0])
    assert {"heldout/psnr_scd", "heldout/se_vs_no_ref", "loss/loss", "heldout/ref_pose_sample_truth"} <= tags, tags


def _event_tags(path: str) -> set:
    """Summary tags in a TensorBoard event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    import struct  # noqa: PLC0415

    from tensorboardX.proto import event_pb2  # noqa: PLC0415

    tags = set()
    with open(path, "rb") as fh:
        while header := fh.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event.FromString(fh.read(length))
            fh.read(4)
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_held_out_loss_is_the_training_loss_on_test_batches():
    """`loss` = mean of `step.compute_loss` over held-out batches (test split, no dropout / flips), with the draws
    of `fold_in(key(seed), i)`; another seed or the training split give other numbers."""
    config, models, params, _ = _tiny_model(num_videos=1)
    config.evals.loss.num_batches = 2
    ev = evals.build(models, config, names=["loss"])["loss"]
    got = ev.evaluate(params)[0]["loss"]
    assert len(ev.batches) == 2 and not any(b["drop_cond"].any() for b in ev.batches)
    schedule = step_lib.make_schedule(config)
    want = np.mean([float(step_lib.compute_loss(models, config, schedule, params, b,
                                                jax.random.fold_in(jax.random.key(0), i))[0])
                    for i, b in enumerate(ev.batches)])
    assert got == pytest.approx(want, rel=1e-6)
    # The batches are the test split's identities.
    test = synthetic.SyntheticSource(1, 16, 16, 16, seed=0, split="test")[0]["frames"] / 127.5 - 1
    assert any(np.allclose(ev.batches[0]["ref_image"][j], f, atol=1e-6) for j in range(8) for f in test)
    with config.unlocked():
        config.evals.loss.seed = 1
    assert evals.build(models, config, names=["loss"])["loss"].evaluate(params)[0]["loss"] != pytest.approx(got)
    with config.unlocked():
        config.evals.loss.seed, config.evals.loss.split = 0, "train"
    assert evals.build(models, config, names=["loss"])["loss"].evaluate(params)[0]["loss"] != pytest.approx(got)


def test_sampling_split_over_the_data_axis_gives_the_same_numbers():
    from jax.sharding import Mesh

    config, models, params, _ = _tiny_model(num_videos=2)
    devices = np.asarray(jax.devices()[:4])
    mesh = Mesh(devices[:2].reshape(2, 1, 1), ("data", "fsdp", "tensor"))
    assert evals.sampling_mesh(mesh, 2) is mesh
    assert evals.sampling_mesh(mesh, 3) is None  # 3 identities do not split over 2 devices
    assert evals.sampling_mesh(Mesh(devices[:2].reshape(1, 2, 1), ("data", "fsdp", "tensor")), 2) is None
    assert evals.sampling_mesh(None, 2) is None

    one, arrays_one = evals.HeldOut("heldout", models, config).evaluate(params)
    held = evals.HeldOut("heldout", models, config, mesh)
    split, arrays_split = held.evaluate(params)
    np.testing.assert_allclose(arrays_split["sample"], arrays_one["sample"], atol=1e-4)
    assert split == pytest.approx(one, abs=1e-3)
    frames = held.sample_fn(params, held.inputs, jax.random.key(3), 1.0)
    assert {d.id for d in frames.sharding.device_set} == {d.id for d in devices[:2]}
    assert frames.addressable_shards[0].data.shape[0] == 1  # each device sampled one identity

    # The standard error is that of the per-identity gains.
    truth = arrays_one["truth"]
    gains = [evals.psnr(arrays_one["sample"][i], truth[i]) - evals.psnr(arrays_one["no_ref"][i], truth[i])
             for i in range(2)]
    assert one["se_vs_no_ref"] == pytest.approx(np.std(gains, ddof=1) / np.sqrt(2))


def test_an_evaluator_is_traced_once_across_runs(tmp_path):
    """The trainer builds its evaluators once, so periodic runs do not trace and compile them again."""
    config, models, _, (trainable, frozen) = _tiny_model(num_videos=1)
    state = {"params": trainable, "ema": {}}
    traces = []

    def listener(event, duration, **kwargs):
        if event.endswith("jaxpr_trace_duration"):
            traces.append(event)

    kept = evals.build(models, config)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for step, evaluators in ((1, kept), (2, kept), (3, None)):
            before = len(traces)
            evals.run(evaluators or evals.build(models, config), state, frozen, step, str(tmp_path))
            counts.append(len(traces) - before)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts[0] > 0 and counts[1] == 0 and counts[2] > 0, counts  # new evaluators (3) are traced again


def test_registry_entries_are_checked_at_start_up():
    assert set(evals.EVALUATORS) == set(config_lib.EVAL_FIELDS)
    cases = [
        ({"evals.heldout.type": "fid"}, r"config.evals.heldout.type='fid': expected one of \('heldout', 'loss'\)"),
        ({"evals.heldout.num_videos": 0}, r"config.evals.heldout.num_videos=0: must be > 0"),
        ({"evals.loss.every": -1}, r"config.evals.loss.every=-1: must be >= 0"),
        ({"evals.heldout.split": "validation"}, r"synthetic source has the splits \('train', 'test'\)"),
        ({"evals.loss.num_frames": 2}, r"config.evals.loss.num_frames is not a field of type 'loss'"),
    ]
    for overrides, message in cases:
        config = config_lib.load("configs/tiny_test.py")
        with config.unlocked():
            for key, value in overrides.items():
                node = config
                *parents, leaf = key.split(".")
                for name in parents:
                    node = node[name]
                node[leaf] = value
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(config)
    config = config_lib.load("configs/tiny_test.py")
    with config.unlocked():
        del config.evals.heldout["seed"]
    with pytest.raises(config_lib.ConfigError, match="config.evals.heldout.seed is missing"):
        config_lib.validate(config)
    config = config_lib.load("configs/tiny_test.py")
    with config.unlocked():
        config.evals = {}
    config_lib.validate(config)  # no evaluations is a valid choice


def test_every_sets_when_an_evaluation_runs_inside_training():
    config = config_lib.load("configs/tiny_test.py")
    with config.unlocked():
        config.total_steps, config.evals.heldout.every, config.evals.loss.every = 10, 3, 0
    assert [s for s in range(1, 11) if evals.due(config, "heldout", s)] == [3, 6, 9]  # the end (10) runs them all
    assert not any(evals.due(config, "loss", s) for s in range(1, 11))  # 0: only at the end
