"""The DWPose-style renderer: expected colours at known pixels of a hand-made skeleton."""

import numpy as np
import pytest

from humandiff.data import keypoints as kpl
from humandiff.data.pose_render import render_pose, render_video

H = W = 512  # DWPose's reference size: limb half-width 4, joint radius 4, face radius 3


def _skeleton():
    kp = np.zeros((133, 3), np.float32)
    body = {
        kpl.NOSE: (250, 120), kpl.LEFT_EYE: (262, 110), kpl.RIGHT_EYE: (238, 110), kpl.LEFT_EAR: (275, 115),
        kpl.RIGHT_EAR: (225, 115), kpl.LEFT_SHOULDER: (300, 200), kpl.RIGHT_SHOULDER: (200, 200),
        kpl.LEFT_ELBOW: (340, 260), kpl.RIGHT_ELBOW: (160, 260), kpl.LEFT_WRIST: (360, 320),
        kpl.RIGHT_WRIST: (140, 320), kpl.LEFT_HIP: (280, 330), kpl.RIGHT_HIP: (220, 330), kpl.LEFT_KNEE: (285, 400),
        kpl.RIGHT_KNEE: (215, 400), kpl.LEFT_ANKLE: (290, 470), kpl.RIGHT_ANKLE: (210, 470),
    }
    for i, (x, y) in body.items():
        kp[i] = (x, y, 0.9)
    kp[kpl.FACE.start] = (450, 60, 0.9)  # one face dot, far from everything
    lh = kpl.LEFT_HAND.start
    kp[lh + 0] = (40, 450, 0.9)  # wrist
    kp[lh + 1] = (80, 450, 0.9)  # thumb CMC: edge 0 (hue 0 -> red) spans x 40..80
    kp[lh + 2] = (80, 490, 0.9)  # edge 1 (hue 1/20)
    return kp


@pytest.fixture(scope="module")
def img():
    return render_pose(_skeleton(), H, W)


def test_shape_dtype_and_black_background(img):
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[5, 5], [0, 0, 0])
    np.testing.assert_array_equal(img[500, 500], [0, 0, 0])


def test_body_limbs_are_dimmed_limb_colours(img):
    # limb 0 neck(250,200)->right shoulder(200,200): colour [255,0,0] * 0.6
    np.testing.assert_array_equal(img[200, 225], [153, 0, 0])
    # limb 1 neck->left shoulder: [255,85,0] * 0.6
    np.testing.assert_array_equal(img[200, 275], [153, 51, 0])
    # limb 2 right shoulder(200,200)->right elbow(160,260): [255,170,0] * 0.6
    np.testing.assert_array_equal(img[230, 180], [153, 102, 0])
    # limb half-width is 4: 3 px off the axis still coloured, 6 px off is background
    np.testing.assert_array_equal(img[203, 225], [153, 0, 0])
    np.testing.assert_array_equal(img[207, 225], [0, 0, 0])


def test_body_joints_are_full_colour_discs(img):
    np.testing.assert_array_equal(img[200, 200], [255, 170, 0])  # right shoulder = OpenPose joint 2
    np.testing.assert_array_equal(img[200, 250], [255, 85, 0])  # neck = joint 1
    np.testing.assert_array_equal(img[120, 250], [255, 0, 0])  # nose = joint 0
    np.testing.assert_array_equal(img[470, 290], [85, 0, 255])  # left ankle = joint 13
    np.testing.assert_array_equal(img[200, 203], [255, 170, 0])  # radius 4 disc


def test_face_and_hand(img):
    np.testing.assert_array_equal(img[60, 450], [255, 255, 255])
    np.testing.assert_array_equal(img[62, 450], [255, 255, 255])  # radius 3
    np.testing.assert_array_equal(img[66, 450], [0, 0, 0])
    np.testing.assert_array_equal(img[450, 40], [0, 0, 255])  # hand joint: blue disc
    np.testing.assert_array_equal(img[450, 60], [255, 0, 0])  # edge 0: hue 0
    np.testing.assert_array_equal(img[470, 80], [255, 77, 0])  # edge 1: hsv(1/20) = (255, 76.500..., 0)


def test_low_score_points_are_not_drawn():
    kp = _skeleton()
    kp[kpl.LEFT_WRIST, 2] = 0.2  # below 0.3: wrist and the forearm limb disappear
    kp[kpl.FACE.start, 2] = 0.1
    kp[kpl.LEFT_HAND.start + 1, 2] = 0.0
    img = render_pose(kp, H, W)
    full = render_pose(_skeleton(), H, W)
    np.testing.assert_array_equal(img[320, 360], [0, 0, 0])
    np.testing.assert_array_equal(img[290, 350], [0, 0, 0])  # forearm midpoint
    assert full[290, 350].any()
    assert not img[50:70, 440:460].any()  # face dot gone
    np.testing.assert_array_equal(img[450, 60], [0, 0, 0])  # hand edge gone
    np.testing.assert_array_equal(img[450, 80], [0, 0, 0])  # and its joint
    np.testing.assert_array_equal(img[200, 225], full[200, 225])  # the rest unchanged
    # a higher threshold hides everything at 0.9
    assert not render_pose(_skeleton(), H, W, score_threshold=0.95).any()


def test_confidence_colors_scale_by_score():
    kp = _skeleton()
    kp[kpl.FACE.start, 2] = 0.5
    img = render_pose(kp, H, W, confidence_colors=True)
    np.testing.assert_array_equal(img[60, 450], [127, 127, 127])
    s = float(np.float32(0.9))  # scores are float32
    np.testing.assert_array_equal(img[200, 200], np.floor(np.array([255, 170, 0]) * s + 1e-6))
    # limb: colour * score_a * score_b, then dimmed
    np.testing.assert_array_equal(img[200, 225], [int(np.floor(255 * s * s + 1e-6) * 0.6), 0, 0])


def test_small_canvas_scales_sizes_and_render_video():
    kp = _skeleton()
    kp[:, :2] /= 8.0
    img = render_pose(kp, 64, 64)
    np.testing.assert_array_equal(img[25, 25], [255, 170, 0])  # right shoulder joint at (25, 25)
    assert not img[22, 25].any()  # radius 1 at 1/8 scale
    vid = render_video(np.stack([kp, kp]), 64, 64)
    assert vid.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(vid[1], img)


@pytest.mark.parametrize("shape", [(17, 3), (133, 2), (1, 133, 3)])
def test_wrong_keypoint_shape_is_an_error(shape):
    with pytest.raises(ValueError, match=r"render_pose keypoints: expected .*\[133, 3\]"):
        render_pose(np.zeros(shape), 32, 32)
    with pytest.raises(ValueError, match=r"\[T, 133, 3\]"):
        render_video(np.zeros((133, 3)), 32, 32)


def test_nan_and_far_away_points_do_not_crash():
    kp = _skeleton()
    kp[kpl.LEFT_WRIST, :2] = [1e12, -1e12]  # a detector glitch: the forearm is drawn towards it, clipped
    kp[kpl.FACE.start, :2] = np.nan  # NaN coordinates count as missing
    img = render_pose(kp, H, W)
    assert not img[50:70, 440:460].any()
    np.testing.assert_array_equal(img[200, 225], [153, 0, 0])
