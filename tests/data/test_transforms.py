"""Frame sampling, the shared geometric transform, the keypoint flip map and CLIP preprocessing."""

import numpy as np
import pytest
from PIL import Image

from humandiff.data import transforms


def test_sample_pair_respects_margin_and_covers_pairs():
    rng = np.random.default_rng(0)
    pairs = {transforms.sample_pair(rng, 6, 3) for _ in range(600)}
    expected = {(r, t) for r in range(6) for t in range(6) if abs(r - t) >= 3}
    assert pairs == expected  # every valid pair is drawn, no invalid one
    with pytest.raises(ValueError, match="4 frames cannot give a pair 4 frames apart"):
        transforms.sample_pair(rng, 4, 4)


def test_sample_clip_span_and_stride():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx, ref = transforms.sample_clip(rng, 10, 4, 3)
        assert list(np.diff(idx)) == [3, 3, 3] and 0 <= idx[0] and idx[-1] <= 9 and 0 <= ref < 10
    with pytest.raises(ValueError, match="9 frames are fewer than the clip span 10"):
        transforms.sample_clip(rng, 9, 4, 3)


def test_flip_permutation_is_a_mirror_involution():
    p = transforms.FLIP_PERMUTATION
    assert sorted(p) == list(range(133)) and (p[p] == np.arange(133)).all()
    assert p[0] == 0 and p[5] == 6 and p[9] == 10 and p[17] == 20  # nose, shoulders, wrists, big toes
    assert p[23 + 0] == 23 + 16 and p[23 + 8] == 23 + 8 and p[23 + 30] == 23 + 30  # jaw ends, chin, nose tip
    assert p[91] == 112 and p[111] == 132  # left hand <-> right hand


@pytest.mark.parametrize("flip, box", [(False, (20.0, 5.0, 40.0)), (True, (20.0, 5.0, 40.0)),
                                       (False, (-30.0, -25.0, 110.0)), (True, (-30.0, -25.0, 110.0))])
def test_keypoints_follow_the_image_transform(flip, box):
    """A bright pixel at a keypoint lands where the transformed keypoint says (within a pixel), for a crop
    inside the frame and for a letterbox box reaching outside it ("fit" mode)."""
    src = np.zeros((60, 80, 3), np.uint8)
    kp = np.zeros((133, 3), np.float32)
    kp[9] = (50, 20, 1.0)  # left wrist at column 50, row 20
    src[19:22, 49:52] = 255
    g = transforms.Geometry(x0=box[0], y0=box[1], box_w=box[2], box_h=box[2], out_h=80, out_w=80, flip=flip)
    out = np.asarray(transforms.apply_geometry(Image.fromarray(src), g))[..., 0].astype(float)
    moved = transforms.transform_keypoints(kp, g)
    j = 10 if flip else 9  # a flipped left wrist is drawn as the right wrist
    yy, xx = np.mgrid[:80, :80]
    cy, cx = (out * yy).sum() / out.sum(), (out * xx).sum() / out.sum()
    assert abs(moved[j, 0] - cx) < 1.0 and abs(moved[j, 1] - cy) < 1.0
    assert moved[j, 2] == 1.0 and moved[9 if flip else 10, 2] == 0.0


def test_fit_mode_letterboxes_the_whole_frame():
    rng = np.random.default_rng(0)
    portrait = Image.fromarray(np.full((80, 40, 3), 200, np.uint8))
    for _ in range(5):
        g = transforms.sample_geometry(rng, 80, 40, 32, 32, (1.0, 1.0), 0.0, mode="fit")
        out = np.asarray(transforms.apply_geometry(portrait, g))[..., 0]
        assert (out > 100).sum(axis=1).tolist() == [16] * 32  # 40/80 of each row is frame, the rest black
    with pytest.raises(ValueError, match="crop mode 'zoom'"):
        transforms.sample_geometry(rng, 80, 40, 32, 32, mode="zoom")


def test_sample_geometry_keeps_aspect_and_bounds():
    rng = np.random.default_rng(1)
    for _ in range(100):
        g = transforms.sample_geometry(rng, 90, 160, 32, 48, (0.5, 1.0), 0.5)
        assert abs(g.box_w / g.box_h - 48 / 32) < 1e-6
        assert 0 <= g.x0 and g.x0 + g.box_w <= 160 + 1e-6 and 0 <= g.y0 and g.y0 + g.box_h <= 90 + 1e-6


def test_jpeg_draft_decoding_matches_full_decode():
    import io

    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 240x320
    src = np.asarray(Image.fromarray(blocks).resize((160, 120)).resize((320, 240), Image.BICUBIC))  # smooth
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, "JPEG", quality=95)
    g = transforms.Geometry(16.0, 8.0, 288.0, 216.0, 54, 72, True)  # 4x shrink: draft decoding kicks in
    img = transforms.open_frame(buf.getvalue())
    fast = np.asarray(transforms.apply_geometry(img, g), np.float32)
    assert img.size == (160, 120)  # decoded at half size
    full = np.asarray(transforms.apply_geometry(Image.fromarray(src), g), np.float32)
    assert np.abs(fast - full).mean() < 2.0  # same picture and placement; JPEG/resampling noise only


def test_clip_preprocess_constant_image():
    img = Image.new("RGB", (60, 30), (128, 64, 200))
    out = transforms.clip_preprocess(img, 224)
    want = (np.array([128, 64, 200]) / 255.0 - transforms.CLIP_MEAN) / transforms.CLIP_STD
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(want, out.shape), atol=1e-5)


@pytest.mark.slow  # imports torch through transformers (~10 s on a loaded 2-core machine)
def test_clip_preprocess_matches_transformers():
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    ours = transforms.clip_preprocess(img, 224)
    ref = transformers.CLIPImageProcessor()(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    # Same PIL bicubic resize and crop; the tolerance covers uint8 rounding inside the processor.
    np.testing.assert_allclose(ours, ref, atol=0.03)


def test_clip_preprocess_matches_the_clip_modules_pillow_exact_version():
    """humandiff.models.clip_preprocess is tested bit-exact against transformers' CLIPImageProcessor."""
    from humandiff.models import clip_preprocess
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (37, 52, 3), dtype=np.uint8)
    ours = transforms.clip_preprocess(Image.fromarray(arr), 224)
    theirs = clip_preprocess.preprocess(arr, size=224)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # both are Pillow's uint8 bicubic + the same formula
