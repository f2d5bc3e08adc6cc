"""Fake raw dataset folders in the public layouts (inputs for the builder tests)."""

import json
import os

import av
import numpy as np
import pytest
from PIL import Image

from data_pipelines import fake_layouts
from data_pipelines.pose.openpose_json import from_openpose_json, to_openpose_json
from humandiff import media
from humandiff.data import keypoints as kpl


def _decode(path):
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_tiktok_layout(tmp_path):
    base = fake_layouts.write_tiktok(str(tmp_path), num_videos=2, num_frames=3, height=32, width=24)
    assert base == str(tmp_path / "TikTok_dataset")
    assert sorted(os.listdir(base)) == ["00001", "00001.npy", "00002", "00002.npy"]
    assert sorted(os.listdir(os.path.join(base, "00001", "images"))) == ["0001.png", "0002.png", "0003.png"]
    img = np.asarray(Image.open(os.path.join(base, "00002", "images", "0003.png")))
    mask = np.asarray(Image.open(os.path.join(base, "00002", "masks", "0003.png")))
    assert img.shape == (32, 24, 3) and mask.shape == (32, 24)
    assert set(np.unique(mask)) == {0, 255} and 0.05 < (mask > 0).mean() < 0.6
    assert media.load_keypoints(os.path.join(base, "00001.npy"), num_frames=3).shape == (3, 133, 3)


def test_ubc_fashion_layout(tmp_path):
    root = fake_layouts.write_ubc_fashion(str(tmp_path), num_train=2, num_test=1, num_frames=4, height=32, width=24)
    for split, n in (("train", 2), ("test", 1)):
        urls = (tmp_path / f"fashion_{split}.txt").read_text().split()
        assert len(urls) == n and all(u.startswith(fake_layouts.UBC_URL_PREFIX) and u.endswith(".mp4") for u in urls)
        for u in urls:
            path = os.path.join(root, split, u.rsplit("/", 1)[1])
            frames = _decode(path)
            assert frames.shape == (4, 32, 24, 3)
            kp = media.load_keypoints(kpl.pose_path_for(path), num_frames=len(frames))
            assert kp.shape == (4, 133, 3)


def test_video_folder_and_mp4_fidelity(tmp_path):
    fake_layouts.write_video_folder(str(tmp_path), num_videos=2, num_frames=5, height=32, width=32)
    assert sorted(os.listdir(tmp_path)) == ["dance_0000.mp4", "dance_0000.npy", "dance_0001.mp4", "dance_0001.npy"]
    from humandiff.data import synthetic
    want = synthetic.SyntheticSource(2, 5, 32, 32, 0)[1]["frames"]
    got = _decode(str(tmp_path / "dance_0001.mp4"))
    assert np.abs(got.astype(float) - want).mean() < 6.0  # H.264 at crf 18 on flat synthetic colours
    with pytest.raises(ValueError, match="even height and width"):
        media.write_mp4(str(tmp_path / "odd.mp4"), np.zeros((2, 31, 32, 3), np.uint8))


def test_viton_hd_layout(tmp_path):
    root = fake_layouts.write_viton_hd(str(tmp_path), num_train=2, num_test=2, height=64, width=48)
    assert (tmp_path / "train_pairs.txt").read_text().splitlines() == ["00000_00.jpg 00000_00.jpg",
                                                                      "00001_00.jpg 00001_00.jpg"]
    assert (tmp_path / "test_pairs.txt").read_text().splitlines() == ["00000_00.jpg 00001_00.jpg",
                                                                     "00001_00.jpg 00000_00.jpg"]
    d = os.path.join(root, "test")
    person = np.asarray(Image.open(os.path.join(d, "image", "00001_00.jpg")))
    cloth = np.asarray(Image.open(os.path.join(d, "cloth", "00001_00.jpg")))
    cmask = np.asarray(Image.open(os.path.join(d, "cloth-mask", "00001_00.jpg")))
    amask = np.asarray(Image.open(os.path.join(d, "agnostic-mask", "00001_00_mask.png")))
    agn = np.asarray(Image.open(os.path.join(d, "agnostic-v3.2", "00001_00.jpg")))
    assert person.shape == cloth.shape == agn.shape == (64, 48, 3)
    assert cmask.shape == amask.shape == (64, 48)
    assert set(np.unique(amask)) == {0, 255} and 0.05 < (amask > 0).mean() < 0.7
    assert (cmask > 128).mean() > 0.2
    kp = media.load_keypoints(os.path.join(d, "image", "00001_00.npy"), video=False)
    with open(os.path.join(d, "openpose_json", "00001_00_keypoints.json")) as f:
        doc = json.load(f)
    assert len(doc["people"][0]["pose_keypoints_2d"]) == 75
    back = from_openpose_json(doc)
    np.testing.assert_allclose(back, kp, atol=1e-4)  # body, feet, face and hands all survive the round trip


def test_openpose_json_formats():
    kp = np.zeros((133, 3), np.float32)
    kp[:, 0] = np.arange(133)
    kp[:, 2] = 1.0
    doc = to_openpose_json(kp)
    body = np.asarray(doc["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
    assert body[1, 0] == pytest.approx(5.5) and body[8, 0] == pytest.approx(11.5)  # neck, mid-hip
    assert len(doc["people"][0]["face_keypoints_2d"]) == 70 * 3
    # COCO-18 input and an empty document
    coco18 = {"people": [{"pose_keypoints_2d": list(np.arange(54, dtype=float))}]}
    got = from_openpose_json(coco18)
    assert got[kpl.RIGHT_SHOULDER, 0] == 6.0  # OpenPose-18 index 2 holds x = 6
    assert not from_openpose_json({"people": []}).any()
    with pytest.raises(ValueError, match="no 'people'"):
        from_openpose_json({}, source="x.json")
    with pytest.raises(ValueError, match="x.json: pose_keypoints_2d"):
        from_openpose_json({"people": [{"pose_keypoints_2d": [1.0, 2.0]}]}, source="x.json")
