"""The trainer's held-out check: PSNRs against true frames, and the samples it writes (mp4/png/json/TensorBoard)."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from humandiff import config_lib
from humandiff.training import evals, modeling, optim
from humandiff.training.writer import MetricWriter


def test_psnr_peak_is_the_signed_range():
    a = np.zeros((2, 4, 4, 3), np.float32)
    assert evals.psnr(a, a + 0.2) == pytest.approx(10 * np.log10(4 / 0.04))
    assert evals.psnr(a + 3.0, a + 1.0) > 100  # samples are clipped to [-1, 1] first


def test_held_out_identities_are_not_training_ones():
    config = config_lib.load("configs/tiny_test.py")
    from humandiff.data import synthetic

    inputs, truth = evals.held_out_inputs(config, num_videos=2, num_frames=3)
    h, w = config.data.resolution
    assert inputs["ref_image"].shape == (2, h, w, 3) and truth.shape == (2, 3, h, w, 3)
    assert inputs["poses"].shape == (2, 3, h, w, 3) and inputs["ref_pose"].shape == (2, h, w, 3)
    assert truth.min() >= -1 and truth.max() <= 1
    train = synthetic.SyntheticSource(2, 1, h, w, seed=config.data.synthetic.seed)
    for i in range(2):
        assert not np.array_equal(train[i]["frames"][0] / 127.5 - 1, inputs["ref_image"][i])


def _tiny_model(num_videos: int):
    """`(config, models, params, (trainable, frozen))`: the tiny config sampling `num_videos` x 2 frames in 2 steps."""
    config = config_lib.load("configs/tiny_test.py")
    config.sample.num_videos, config.sample.num_frames, config.sample.num_steps = num_videos, 2, 2
    models, _ = modeling.build(config)
    params = jax.jit(lambda k: modeling.init_params(models, config, k))(jax.random.key(0))
    mask = optim.trainable_mask(params, tuple(config.optim.trainable), tuple(config.optim.frozen))
    return config, models, params, optim.split(params, mask)


def test_write_samples_writes_media_metrics_and_events(tmp_path):
    config, models, params, (trainable, frozen) = _tiny_model(num_videos=2)
    writer = MetricWriter(str(tmp_path / "tb"))
    metrics = evals.write_samples(models, config, {"params": trainable, "ema": {}}, frozen, 7, str(tmp_path), writer)
    writer.close()

    inputs, truth = evals.held_out_inputs(config, 2, 2)
    copy = np.broadcast_to(inputs["ref_image"][:, None], truth.shape)
    assert metrics["psnr_copy_ref"] == pytest.approx(evals.psnr(copy, truth))
    assert all(np.isfinite(v) for v in metrics.values()) and set(metrics) == {
        "psnr_scd", "psnr_no_ref", "psnr_copy_ref", "se_vs_copy_ref", "se_vs_no_ref"}
    stem = tmp_path / "samples" / "step_0000007"
    with open(f"{stem}.json") as fh:
        assert json.load(fh) == dict(metrics, step=7, num_videos=2, num_frames=2)
    h, w = config.data.resolution
    # Frames side by side; per frame the videos stacked, each row reference | pose | sample | truth.
    assert Image.open(f"{stem}.png").size == (2 * 4 * w, 2 * h)
    assert os.path.getsize(f"{stem}.mp4") > 0
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))


def test_sampling_split_over_the_data_axis_gives_the_same_numbers():
    from jax.sharding import Mesh

    config, models, params, _ = _tiny_model(num_videos=2)
    devices = np.asarray(jax.devices()[:4])
    mesh = Mesh(devices[:2].reshape(2, 1, 1), ("data", "fsdp", "tensor"))
    assert evals.sampling_mesh(mesh, 2) is mesh
    assert evals.sampling_mesh(mesh, 3) is None  # 3 identities do not split over 2 devices
    assert evals.sampling_mesh(Mesh(devices[:2].reshape(1, 2, 1), ("data", "fsdp", "tensor")), 2) is None
    assert evals.sampling_mesh(None, 2) is None

    one, arrays_one = evals.evaluate(models, config, params, num_videos=2, num_frames=2, seed=3)
    split, arrays_split = evals.evaluate(models, config, params, num_videos=2, num_frames=2, seed=3, mesh=mesh)
    np.testing.assert_allclose(arrays_split["sample"], arrays_one["sample"], atol=1e-4)
    assert split == pytest.approx(one, abs=1e-3)
    inputs, _ = evals.held_out_inputs(config, 2, 2)
    frames = evals.make_sampler_fn(models, config, mesh)(params, inputs, jax.random.key(3), 1.0)
    assert {d.id for d in frames.sharding.device_set} == {d.id for d in devices[:2]}
    assert frames.addressable_shards[0].data.shape[0] == 1  # each device sampled one identity

    # The standard error is that of the per-identity gains.
    truth = arrays_one["truth"]
    gains = [evals.psnr(arrays_one["sample"][i], truth[i]) - evals.psnr(arrays_one["no_ref"][i], truth[i])
             for i in range(2)]
    assert one["se_vs_no_ref"] == pytest.approx(np.std(gains, ddof=1) / np.sqrt(2))


def test_a_kept_sampler_is_traced_once_across_sample_calls(tmp_path):
    """The trainer keeps one sampler, so periodic samples do not trace and compile it again."""
    config, models, _, (trainable, frozen) = _tiny_model(num_videos=1)
    state = {"params": trainable, "ema": {}}
    traces = []

    def listener(event, duration, **kwargs):
        if event.endswith("jaxpr_trace_duration"):
            traces.append(event)

    sampler = evals.make_sampler_fn(models, config)
    writer = MetricWriter(str(tmp_path / "tb"))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for step, kept in ((1, sampler), (2, sampler), (3, None)):
            before = len(traces)
            evals.write_samples(models, config, state, frozen, step, str(tmp_path), writer, sample_fn=kept)
            counts.append(len(traces) - before)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        writer.close()
    assert counts[0] > 0 and counts[1] == 0 and counts[2] > 0, counts  # a new sampler (3) is traced again
