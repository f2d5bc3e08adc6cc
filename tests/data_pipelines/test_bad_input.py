"""Bad raw input: on_error=raise names the file; on_error=skip drops it, counts it and records it in
metadata.json. Each case damages one video of an otherwise good UBC-Fashion folder (or a TikTok frame)."""

import os

import numpy as np
import pytest

from data_pipelines import build
from humandiff import media
from humandiff.data import sources


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _corrupt_mp4(v):
    with open(v + ".mp4", "wb") as f:
        f.write(os.urandom(2000))


def _truncated_mp4(v):
    _truncate(v + ".mp4", 0.6)


def _truncated_faststart_mp4(v):  # index at the front: the file opens, frames are missing
    import av

    frames = []
    with av.open(v + ".mp4") as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    _write_faststart(v + ".mp4", np.stack(frames * 8))
    _truncate(v + ".mp4", 0.7)


def _write_faststart(path, frames):
    import av

    with av.open(path, "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _missing_pose(v):
    os.remove(v + ".npy")


def _short_pose(v):
    np.save(v + ".npy", np.load(v + ".npy")[:-2])


def _truncated_pose(v):
    _truncate(v + ".npy", 0.5)


def _extra_poses(v):  # more poses than frames
    kp = np.load(v + ".npy")
    np.save(v + ".npy", np.concatenate([kp, kp[:1]]))


def _wrong_pose_shape(v):
    np.save(v + ".npy", np.load(v + ".npy")[:, :17])


def _normalised_pose(v):
    kp = np.load(v + ".npy")
    kp[..., 0] /= 32.0
    kp[..., 1] /= 24.0
    np.save(v + ".npy", kp)


CASES = {
    "corrupt_mp4": (_corrupt_mp4, ".mp4", "cannot open video|corrupt"),
    "truncated_mp4": (_truncated_mp4, ".mp4", "no video stream"),
    "truncated_faststart_mp4": (_truncated_faststart_mp4, ".mp4", "truncated video: decoded|decoding failed after"),
    "missing_pose": (_missing_pose, ".npy", "pose file missing"),
    "short_pose": (_short_pose, ".npy", "short pose file: 4 poses for 6 frames"),
    "truncated_pose": (_truncated_pose, ".npy", "unreadable or truncated pose file"),
    "pose_count_mismatch": (_extra_poses, ".npy", "frame/pose count mismatch: 7 poses for 6 frames"),
    "wrong_pose_shape": (_wrong_pose_shape, ".npy", r"shape \(6, 17, 3\)"),
    "normalised_pose": (_normalised_pose, ".npy", "normalised"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_video_raise_then_skip(tmp_path, fakes, case):
    damage, ext, reason = CASES[case]
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=2, n_test=0)
    bad = str(tmp_path / "raw" / "train" / "91-0001")
    damage(bad)
    with pytest.raises(media.BadInputError, match=reason) as err:
        build.build("ubc_fashion", str(tmp_path / "out_raise"), raw)
    assert err.value.path == bad + ext and os.path.basename(bad) in str(err.value)
    out = build.build("ubc_fashion", str(tmp_path / "out_skip"), raw, on_error="skip", num_workers=2)
    src = sources.open_tfds(out, "train")
    assert [src[i]["video_id"] for i in range(len(src))] == ["91-0000"]
    meta = sources.dataset_metadata(out)
    assert meta["num_skipped"] == {"train": 1} and meta["on_error"] == "skip"
    assert meta["skipped"]["train"][0]["file"] == bad + ext


def test_video_shorter_than_min_frames(tmp_path, fakes):
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=2, n_test=0)
    short = str(tmp_path / "raw" / "train" / "91-0000")
    fakes.write_mp4(short + ".mp4", fakes.frames_for(0, t=3))
    np.save(short + ".npy", fakes.keypoints_for(0, t=3))
    with pytest.raises(media.BadInputError, match="video too short: 3 frames < min_frames=5"):
        build.build("ubc_fashion", str(tmp_path / "a"), raw, min_frames=5)
    out = build.build("ubc_fashion", str(tmp_path / "b"), raw, min_frames=5, on_error="skip")
    assert sources.dataset_metadata(out)["skipped"]["train"][0]["file"] == short + ".mp4"
    assert len(sources.open_tfds(out, "train")) == 1


def test_listed_video_missing(tmp_path, fakes):
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=2, n_test=0)
    os.remove(str(tmp_path / "raw" / "train" / "91-0000.mp4"))
    with pytest.raises(media.BadInputError, match="91-0000.mp4: file not found"):
        build.build("ubc_fashion", str(tmp_path / "a"), raw)


def test_corrupt_frame_image(tmp_path, fakes):
    raw = fakes.make_tiktok(str(tmp_path / "raw"), n=2)
    frame = str(tmp_path / "raw" / "00002" / "images" / "0003.png")
    _truncate(frame, 0.5)
    with pytest.raises(media.BadInputError, match="corrupt or truncated image") as err:
        build.build("tiktok", str(tmp_path / "a"), raw)
    assert err.value.path == frame
    out = build.build("tiktok", str(tmp_path / "b"), raw, on_error="skip")
    assert sources.dataset_metadata(out)["skipped"]["train"][0]["file"] == frame
    assert len(sources.open_tfds(out, "train")) == 1


def test_frame_size_change_in_folder(tmp_path, fakes):
    from PIL import Image

    raw = fakes.make_tiktok(str(tmp_path / "raw"), n=1)
    frame = str(tmp_path / "raw" / "00001" / "images" / "0002.png")
    Image.new("RGB", (10, 10)).save(frame)
    with pytest.raises(media.BadInputError, match="differs from the first frame"):
        build.build("tiktok", str(tmp_path / "a"), raw)


def test_viton_mask_size_mismatch(tmp_path, fakes):
    from PIL import Image

    raw = fakes.make_viton(str(tmp_path / "raw"), n_train=2, n_test=0)
    mask = str(tmp_path / "raw" / "train" / "agnostic-mask" / "00001_00_mask.png")
    Image.new("L", (5, 5)).save(mask)
    with pytest.raises(media.BadInputError, match="mask size"):
        build.build("viton_hd", str(tmp_path / "a"), raw)
    out = build.build("viton_hd", str(tmp_path / "b"), raw, on_error="skip")
    assert sources.dataset_metadata(out)["skipped"]["train"][0]["file"] == mask


def test_on_error_value_checked(tmp_path):
    with pytest.raises(ValueError, match="on_error='ignore'"):
        build.build("synthetic", str(tmp_path), on_error="ignore")


def test_grey_and_rgba_video_frames_are_converted_and_counted(tmp_path, fakes):
    import av

    raw = str(tmp_path / "raw")
    os.makedirs(f"{raw}/train")
    path = f"{raw}/train/grey.mp4"
    with av.open(path, "w") as c:  # an 8-bit grey video (ffv1 keeps the gray pixel format)
        s = c.add_stream("ffv1", rate=8)
        s.width, s.height, s.pix_fmt = 32, 24, "gray"
        for f in fakes.frames_for(0)[..., 1]:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    np.save(f"{raw}/train/grey.npy", fakes.keypoints_for(0))
    out = build.build("ubc_fashion", str(tmp_path / "out"), raw)
    assert sources.dataset_metadata(out)["conversions"]["train"] == {"gray->RGB": fakes.T}
    rec = sources.open_tfds(out, "train")[0]
    from PIL import Image
    import io

    img = np.asarray(Image.open(io.BytesIO(rec["frames_jpeg"][2])))
    assert img.shape == (24, 32, 3) and abs(int(img[..., 0].mean()) - 50) <= 2  # grey value of frame 2


def test_cli_reports_bad_input_without_traceback(tmp_path, fakes, capsys):
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=1, n_test=0)
    os.remove(str(tmp_path / "raw" / "train" / "91-0000.npy"))
    with pytest.raises(SystemExit) as e:
        build.main(["--dataset", "ubc_fashion", "--manual_dir", raw, "--data_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    err = err[err.index("error: "):]  # after TFDS's progress bars
    assert e.value.code == 2 and err.count("\n") == 1
    assert "91-0000.npy: pose file missing" in err and "--on_error skip" in err
