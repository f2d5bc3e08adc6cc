"""Pose alignment: a scaled and shifted copy maps back onto the reference, also with missing points."""

import numpy as np
import pytest

from humandiff.data import keypoints as kpl
from humandiff.data import synthetic
from humandiff.data.pose_align import align_poses, estimate_alignment


@pytest.fixture(scope="module")
def poses():
    kp = synthetic.make_video(11, 6, 128, 96)["keypoints"]
    kp[..., 2] = 0.9
    return kp


def test_scaled_shifted_copy_recovers_reference(poses):
    ref = poses[0]
    driving = poses.copy()
    driving[..., :2] = 0.6 * poses[..., :2] + np.array([30.0, -12.0])
    out = align_poses(driving, ref)
    assert out.shape == driving.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[..., :2], poses[..., :2], atol=1e-3)  # whole motion maps back
    np.testing.assert_array_equal(out[..., 2], driving[..., 2])
    scale, shift = estimate_alignment(driving, ref)
    assert scale == pytest.approx(1 / 0.6, rel=1e-5)
    np.testing.assert_allclose(shift, -np.array([30.0, -12.0]) / 0.6, atol=1e-3)


def test_missing_points_are_ignored(poses):
    ref = poses[0].copy()
    driving = poses.copy()
    driving[..., :2] = 1.7 * poses[..., :2] + np.array([-40.0, 5.0])
    ref[[kpl.LEFT_ELBOW, kpl.RIGHT_KNEE], 2] = 0.0  # occluded in the reference
    driving[:, kpl.LEFT_HIP, 2] = 0.1  # never seen in the driving video
    driving[2:, kpl.RIGHT_WRIST, 2] = 0.0  # lost after frame 2
    driving[:, [kpl.LEFT_HIP], :2] = -1.0  # detectors write junk coordinates for missing points
    out = align_poses(driving, ref)
    keep = np.ones(133, bool)
    keep[kpl.LEFT_HIP] = False
    np.testing.assert_allclose(out[:, keep, :2], poses[:, keep, :2], atol=1e-3)


def test_identity_when_already_aligned(poses):
    np.testing.assert_allclose(align_poses(poses, poses[0]), poses, atol=1e-4)


def test_bad_inputs():
    ref = np.zeros((133, 3), np.float32)
    drv = np.zeros((4, 133, 3), np.float32)
    with pytest.raises(ValueError, match="no body segment"):
        align_poses(drv, ref)
    with pytest.raises(ValueError, match=r"align_poses driving: expected .*\[T, 133, 3\]"):
        align_poses(ref, ref)
    with pytest.raises(ValueError, match=r"align_poses reference: expected .*\[133, 3\]"):
        align_poses(drv, drv)
    with pytest.raises(ValueError, match="anchor_frame 9 out of range"):
        align_poses(drv, ref, anchor_frame=9)


def test_render_cli_with_alignment(tmp_path, poses):
    import av

    from data_pipelines.pose import render

    driving = poses.copy()
    driving[..., :2] = 0.5 * poses[..., :2] + 7.0
    np.save(tmp_path / "drv.npy", driving)
    np.save(tmp_path / "ref.npy", poses[0])
    out = str(tmp_path / "pose.mp4")
    assert render.main(["--poses", str(tmp_path / "drv.npy"), "--out", out, "--size", "128x96",
                        "--align_to", str(tmp_path / "ref.npy")]) == 0
    with av.open(out) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (6, 128, 96, 3)
    from humandiff.data.pose_render import render_pose
    want = render_pose(poses[0], 128, 96).astype(float)
    assert np.abs(frames[0].astype(float) - want).mean() < 4.0  # aligned back onto the reference
    with pytest.raises(SystemExit):
        render.main(["--poses", "x.npy", "--out", out, "--size", "big"])
