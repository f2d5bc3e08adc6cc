"""Keypoint layout, file IO (round trips and bad inputs) and the OpenPose-18 view."""

import json

import numpy as np
import pytest

from humandiff import media
from humandiff.data import keypoints as kpl


def _video(t=3, seed=0):
    rng = np.random.default_rng(seed)
    kp = rng.uniform(0, 100, (t, 133, 3)).astype(np.float32)
    kp[..., 2] = rng.uniform(0, 1, (t, 133))
    return kp


def test_layout_ranges_cover_133_points_without_overlap():
    parts = [kpl.BODY, kpl.FEET, kpl.FACE, kpl.LEFT_HAND, kpl.RIGHT_HAND]
    idx = np.concatenate([np.arange(133)[p] for p in parts])
    np.testing.assert_array_equal(idx, np.arange(133))
    assert [p.stop - p.start for p in parts] == [17, 6, 68, 21, 21]
    assert len(kpl.BODY_NAMES) == 17 and kpl.BODY_NAMES[kpl.LEFT_WRIST] == "left_wrist"


@pytest.mark.parametrize("ext", [".npy", ".json"])
def test_save_load_round_trip(tmp_path, ext):
    kp = _video()
    path = tmp_path / f"clip{ext}"
    media.save_keypoints(path, kp)
    got = media.load_keypoints(path, num_frames=3)
    assert got.dtype == np.float32 and got.shape == (3, 133, 3)
    np.testing.assert_allclose(got, kp, rtol=1e-6)


def test_single_frame_round_trip(tmp_path):
    kp = _video(1)[0]
    media.save_keypoints(tmp_path / "img.npy", kp)
    assert media.load_keypoints(tmp_path / "img.npy", video=False).shape == (133, 3)


def test_missing_pose_file_names_the_path(tmp_path):
    path = tmp_path / "nothere.npy"
    with pytest.raises(FileNotFoundError, match="pose file missing: .*nothere.npy"):
        media.load_keypoints(path)


def test_short_pose_file_is_an_error(tmp_path):
    media.save_keypoints(tmp_path / "a.npy", _video(3))
    with pytest.raises(ValueError, match=r"a.npy: pose file too short: 3 frames .* 5 frames"):
        media.load_keypoints(tmp_path / "a.npy", num_frames=5)
    with pytest.raises(ValueError, match="too long"):
        media.load_keypoints(tmp_path / "a.npy", num_frames=2)


@pytest.mark.parametrize("shape", [(3, 17, 3), (133, 3), (3, 133, 2), (2, 3, 133, 3)])
def test_wrong_shape_in_file_is_an_error(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=r"bad.npy: expected COCO-WholeBody keypoints of shape \[T, 133, 3\]"):
        media.load_keypoints(tmp_path / "bad.npy")


def test_wrong_shape_on_save_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        media.save_keypoints(tmp_path / "x.npy", np.zeros((4, 18, 3)))
    with pytest.raises(ValueError, match=".npy or .json"):
        media.save_keypoints(tmp_path / "x.txt", _video())
    (tmp_path / "broken.json").write_text("[[1, 2")
    with pytest.raises(ValueError, match="broken.json: cannot read keypoints"):
        media.load_keypoints(tmp_path / "broken.json")
    (tmp_path / "ragged.json").write_text(json.dumps([[1, 2, 3]]))
    with pytest.raises(ValueError, match="ragged.json"):
        media.load_keypoints(tmp_path / "ragged.json")


def test_pose_path_for(tmp_path):
    assert kpl.pose_path_for("a/b/clip.mp4") == "a/b/clip.npy"
    folder = tmp_path / "00001"
    folder.mkdir()
    assert kpl.pose_path_for(str(folder) + "/") == str(tmp_path / "00001.npy")


def test_to_openpose18_order_and_neck():
    kp = np.zeros((133, 3), np.float32)
    kp[:17, 0] = np.arange(17)  # x = COCO index
    kp[:17, 2] = 1.0
    kp[5, 1], kp[6, 1] = 10.0, 20.0
    kp[6, 2] = 0.4
    op = kpl.to_openpose18(kp)
    assert op.shape == (18, 3)
    # OpenPose order: nose, [neck], r-sho, r-elb, r-wri, l-sho, l-elb, l-wri, r-hip, r-knee, r-ank, l-hip, ...,
    # l-ank, r-eye, l-eye, r-ear, l-ear
    np.testing.assert_array_equal(op[[0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], 0],
                                  [0, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])
    np.testing.assert_allclose(op[1], [5.5, 15.0, 0.4])
    assert kpl.to_openpose18(np.stack([kp, kp])).shape == (2, 18, 3)
