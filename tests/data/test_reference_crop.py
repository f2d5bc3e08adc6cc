"""`data.reference_crop_scale`: the reference framed by a crop of its own (another camera distance and offset).

The records are coordinate ramps: pixel (x, y) of every frame is (R, G) = (4x, 4y) and B = 10 t, so a loaded pixel
tells which source point it shows, and the slope of R across a row tells the crop's width. One keypoint (the nose)
is visible, at the same source point in every frame: its rendered dot must land on the pixel that shows that point,
in the reference as in the targets.
"""

import numpy as np
import pytest

from humandiff import config_lib
from humandiff.data import examples, loader
from humandiff.training import evals, input as train_input

H, W, T, OUT = 40, 48, 12, 32
NOSE = (20.0, 15.0)  # source (x, y)


def _record(v=0):
    y, x = np.mgrid[0:H, 0:W]
    frames = np.empty((T, H, W, 3), np.uint8)
    frames[..., 0], frames[..., 1] = 4 * x, 4 * y
    frames[..., 2] = (10 * np.arange(T))[:, None, None]
    kp = np.zeros((T, 133, 3), np.float32)
    kp[:, 0] = (*NOSE, 1.0)
    return {"video_id": f"ramp{v}", "frames": frames, "keypoints": kp, "fps": 8.0}


def _options(**kw):
    base = dict(stage="image", height=OUT, width=OUT, min_margin=2, drop_prob=0.0, flip_prob=0.0, crop_scale=(1.0, 1.0),
                num_frames=3, stride=2)
    return examples.ExampleOptions(**{**base, **kw})


def _to_uint8(img):
    return np.rint((np.asarray(img, np.float64) + 1.0) * 127.5)


def _box_scale(img):
    """The crop's side as a fraction of the base (fill) box H, from the slope of R along the middle row."""
    r = _to_uint8(img)[OUT // 2, :, 0]
    return float(np.mean(np.diff(r[2:-2]))) / 4.0 * OUT / H


def _dot_source_point(img, pose):
    """The source (x, y) shown at the centre of the pose's dot."""
    weight = np.asarray(pose).sum(-1)
    ys, xs = np.nonzero(weight)
    u = int(np.rint((xs * weight[ys, xs]).sum() / weight[ys, xs].sum()))
    v = int(np.rint((ys * weight[ys, xs]).sum() / weight[ys, xs].sum()))
    px = _to_uint8(img)[v, u]
    return px[0] / 4.0, px[1] / 4.0


def _tolerance(img):  # the dot sits on a whole output pixel: half a pixel of source, plus the ramp's rounding
    return 0.5 * _box_scale(img) * H / OUT + 0.35


@pytest.mark.parametrize("stage", ["image", "video"])
def test_reference_gets_its_own_crop_and_its_pose_follows_it(stage):
    op = examples.VideoExampleOp(_options(stage=stage, reference_crop_scale=(0.5, 0.7)))
    scales, seen = [], 0
    for i in range(12):
        ex = op(_record(), np.random.default_rng(i))
        targets = ex["tgt_image"] if stage == "video" else ex["tgt_image"][None]
        poses = ex["tgt_pose"] if stage == "video" else ex["tgt_pose"][None]
        # The targets: the whole base box (crop_scale 1), all framed alike.
        for img, pose in zip(targets, poses):
            assert _box_scale(img) == pytest.approx(1.0, abs=0.02)
            np.testing.assert_allclose(_dot_source_point(img, pose), NOSE, atol=_tolerance(img))
        scale = _box_scale(ex["ref_image"])
        assert 0.5 - 0.02 <= scale <= 0.7 + 0.02
        if ex["ref_pose"].any():  # the close-up can leave the nose out
            np.testing.assert_allclose(_dot_source_point(ex["ref_image"], ex["ref_pose"]), NOSE,
                                       atol=_tolerance(ex["ref_image"]))
            seen += 1
        scales.append(scale)
    assert np.ptp(scales) > 0.05  # drawn per example, not one fixed zoom
    assert seen >= 4, seen


def test_without_it_the_reference_is_framed_as_the_target():
    op = examples.VideoExampleOp(_options(crop_scale=(0.5, 1.0)))
    for i in range(4):
        ex = op(_record(), np.random.default_rng(i))
        np.testing.assert_array_equal(ex["ref_image"][..., :2], ex["tgt_image"][..., :2])  # the same source pixels
        assert not np.array_equal(ex["ref_image"][..., 2], ex["tgt_image"][..., 2])  # of other frames


def test_held_out_reference_is_reframed_the_same_way_every_time():
    plain = examples.held_out_video(_record(), _options(), 4)
    options = _options(reference_crop_scale=(0.5, 0.7))
    a, b = examples.held_out_video(_record(), options, 4), examples.held_out_video(_record(), options, 4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for k in ("tgt_image", "tgt_pose"):  # the targets keep the centred whole frame
        np.testing.assert_array_equal(a[k], plain[k])
    assert _box_scale(plain["ref_image"]) == pytest.approx(1.0, abs=0.02)
    assert 0.5 - 0.02 <= _box_scale(a["ref_image"]) <= 0.7 + 0.02
    np.testing.assert_allclose(_dot_source_point(a["ref_image"], a["ref_pose"]), NOSE, atol=_tolerance(a["ref_image"]))
    other = examples.held_out_video(_record(1), options, 4)  # another video, another framing
    assert not np.array_equal(other["ref_image"][..., :2], a["ref_image"][..., :2])


def _demo(**data):
    config = config_lib.load("configs/demo.py:runlocal")
    config.data.update(data)
    return config


def _extent(pose):  # height of the drawn skeleton, output pixels
    rows = np.nonzero(np.asarray(pose).sum(-1).sum(-1))[0]
    return rows.max() - rows.min()


def test_the_trainers_held_out_set_uses_it():
    """Through `evals.held_out` (what the trainer's evaluations sample), on the synthetic figures."""
    plain, truth_plain = evals.held_out(_demo(), "test", 3, 2)
    reframed, truth = evals.held_out(_demo(reference_crop_scale=(0.7, 0.9)), "test", 3, 2)
    np.testing.assert_array_equal(truth, truth_plain)
    np.testing.assert_array_equal(reframed["poses"], plain["poses"])
    assert not np.array_equal(reframed["ref_image"], plain["ref_image"])
    for r, p in zip(reframed["ref_pose"], plain["ref_pose"]):  # the close-up shows the figure 1/0.9 to 1/0.7 larger
        assert 1.0 / 0.9 - 0.15 <= _extent(r) / _extent(p) <= 1.0 / 0.7 + 0.15


@pytest.mark.parametrize("value, task, message", [
    ((0.0, 0.5), "image", "0 < min <= max <= 1"),
    ((0.8, 0.6), "image", "0 < min <= max <= 1"),
    ((0.5,), "video", "0 < min <= max <= 1"),
    ((0.5, 0.7), "tryon", "try-on stage shows the garment whole"),
])
def test_values_that_cannot_mean_what_they_say_are_refused(value, task, message):
    c = loader.default_config()
    c.stage, c.reference_crop_scale = task, value
    config = _demo(reference_crop_scale=value)
    config.task = task
    if task == "video":
        config.data.num_frames = 2
    if task == "tryon":  # what the try-on stage reads, so that the check reached is this one
        c.source, c.data_dir = "tfds", "/nonexistent"
        config.data.source, config.data.data_dir = "tfds", "/nonexistent"
    with pytest.raises(ValueError, match=f"data.reference_crop_scale=.*{message}"):
        loader.validate_config(c)
    with pytest.raises(config_lib.ConfigError, match=f"config.data.reference_crop_scale=.*{message}"):
        config_lib.validate(config)


def test_a_run_config_without_the_key_reads_as_off():
    """A workdir's config.json from before the switch: the loader's default (off)."""
    config = _demo()
    del config.data.reference_crop_scale
    config_lib.validate(config)
    assert loader.example_options(train_input.data_config(config)).reference_crop_scale == ()
