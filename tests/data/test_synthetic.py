"""The embedded synthetic dataset: determinism, shapes, learnability properties, splits, speed."""

import time

import numpy as np
import pytest

from humandiff.data import keypoints as kpl
from humandiff.data import synthetic
from humandiff.data.synthetic_figure import make_appearance


@pytest.fixture(scope="module")
def video():
    return synthetic.make_video(7, 12, 96, 80)


def test_record_contract(video):
    assert set(video) == {"video_id", "frames", "keypoints", "fps"}
    assert video["frames"].shape == (12, 96, 80, 3) and video["frames"].dtype == np.uint8
    assert video["keypoints"].shape == (12, 133, 3) and video["keypoints"].dtype == np.float32
    assert isinstance(video["video_id"], str) and video["fps"] == synthetic.FPS
    kp = video["keypoints"]
    vis = kp[..., 2] > 0.5
    assert vis[:, kpl.BODY].mean() > 0.9  # the figure is mostly in frame
    assert np.all(kp[vis][:, 0] >= 0) and np.all(kp[vis][:, 0] <= 79)
    assert np.all(kp[vis][:, 1] >= 0) and np.all(kp[vis][:, 1] <= 95)
    assert set(np.unique(kp[..., 2])) <= {0.0, 1.0}


def test_deterministic_and_seed_dependent(video):
    again = synthetic.make_video(7, 12, 96, 80)
    np.testing.assert_array_equal(again["frames"], video["frames"])
    np.testing.assert_array_equal(again["keypoints"], video["keypoints"])
    other = synthetic.make_video(8, 12, 96, 80)
    assert np.abs(other["keypoints"] - video["keypoints"]).max() > 1.0


def test_motion_is_smooth_and_moves(video):
    body = video["keypoints"][:, kpl.BODY, :2]
    step = np.linalg.norm(np.diff(body, axis=0), axis=-1)
    assert step.max() < 0.15 * 96  # no jumps between frames
    assert step.mean() > 0.05  # but it moves
    assert not np.array_equal(video["frames"][0], video["frames"][-1])


def test_appearance_follows_identity_and_pose_follows_skeleton():
    a = synthetic.make_video(1, 6, 64, 64, identity=5)
    b = synthetic.make_video(2, 6, 64, 64, identity=5)
    c = synthetic.make_video(1, 6, 64, 64, identity=6)
    np.testing.assert_array_equal(a["frames"][0, 0, 0], b["frames"][0, 0, 0])  # same background
    # same motion seed: same joint angles (limb lengths belong to the identity)
    for kpa, kpc in ((a["keypoints"], c["keypoints"]),):
        for p, q in ((kpl.LEFT_SHOULDER, kpl.LEFT_ELBOW), (kpl.RIGHT_HIP, kpl.RIGHT_KNEE)):
            da, dc = kpa[:, q, :2] - kpa[:, p, :2], kpc[:, q, :2] - kpc[:, p, :2]
            np.testing.assert_allclose(da / np.linalg.norm(da, axis=-1, keepdims=True),
                                       dc / np.linalg.norm(dc, axis=-1, keepdims=True), atol=1e-4)
    assert not np.array_equal(a["frames"], c["frames"])  # different identity: different pixels
    app = make_appearance(5)
    # thighs are drawn in the pants colour: check the centre of every visible left thigh
    kp = a["keypoints"]
    mid = np.rint(0.5 * (kp[:, kpl.LEFT_HIP, :2] + kp[:, kpl.LEFT_KNEE, :2])).astype(int)
    got = a["frames"][np.arange(6), mid[:, 1], mid[:, 0]].astype(float)
    close = np.abs(got - app.pants[None]).max(-1) <= 2
    assert close.mean() >= 0.8


def test_source_random_access_and_disjoint_splits():
    train = synthetic.SyntheticSource(6, 4, 32, 32, seed=3)
    test = synthetic.SyntheticSource(6, 4, 32, 32, seed=3, split="test")
    assert len(train) == 6
    r = train[2]
    assert r["frames"].shape == (4, 32, 32, 3) and r["keypoints"].shape == (4, 133, 3)
    np.testing.assert_array_equal(train[2]["frames"], r["frames"])
    assert len({train[i]["video_id"] for i in range(6)}) == 6
    assert not {train.identity(i) for i in range(6)} & {test.identity(i) for i in range(6)}
    assert not np.array_equal(train[0]["frames"], test[0]["frames"])
    with pytest.raises(IndexError, match="out of range"):
        train[6]
    shared = synthetic.SyntheticSource(6, 4, 32, 32, num_identities=2)
    assert shared.identity(0) == shared.identity(2) != shared.identity(1)
    assert shared.motion_seed(0) != shared.motion_seed(2)
    with pytest.raises(ValueError, match="split"):
        synthetic.SyntheticSource(2, 4, 32, 32, split="val")
    with pytest.raises(ValueError, match="num_frames"):
        synthetic.make_video(0, 0, 32, 32)


def test_travel_bounds_sideways_wandering():
    """travel=0 keeps the pelvis column fixed; a larger travel moves it further; out-of-range travel is an error."""
    from humandiff.data.synthetic_figure import make_motion
    still = make_motion(5, 24, travel=0.0)["x"]
    np.testing.assert_allclose(still, still[0])
    spans = [np.ptp(make_motion(s, 24, travel=0.4)["x"]) - np.ptp(make_motion(s, 24)["x"]) for s in range(8)]
    assert min(spans) >= 0 and max(spans) > 0.1
    np.testing.assert_array_equal(make_motion(5, 24)["torso"], make_motion(5, 24, travel=0.4)["torso"])
    with pytest.raises(ValueError, match="travel"):
        synthetic.SyntheticSource(2, 4, 32, 32, travel=0.8)
    with pytest.raises(ValueError, match="travel"):
        synthetic.make_video(0, 4, 32, 32, travel=-0.1)


def test_fast_enough():
    synthetic.make_video(0, 24, 64, 64)
    times = []
    for s in range(5):
        t0 = time.perf_counter()
        synthetic.make_video(s, 24, 64, 64)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.05, times  # ~5 ms on an idle core; generous for a shared CI machine
