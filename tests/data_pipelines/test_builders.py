"""Each builder builds from a fake raw folder in its real layout and reads back through grain, TF-free."""

import json
import os
import sys

import numpy as np
import pytest

from data_pipelines import build
from humandiff.data import loader, sources


def _loader_config(data_dir, stage="image", split="train", **kw):
    c = loader.default_config()
    c.source, c.data_dir, c.split, c.stage = "tfds", data_dir, split, stage
    c.resolution, c.batch_size, c.min_margin, c.num_threads, c.prefetch = (16, 24), 2, 2, 1, 2
    c.num_frames, c.stride = 3, 2
    c.update(kw)
    return c


def _check_video_batch(b, f=None):
    h, w = 16, 24
    tgt = (2, f, h, w, 3) if f else (2, h, w, 3)
    assert b["ref_image"].shape == (2, h, w, 3) and b["tgt_image"].shape == tgt
    assert b["ref_pose"].shape == (2, h, w, 3) and b["tgt_pose"].shape == tgt
    assert b["clip_image"].shape == (2, 224, 224, 3) and b["drop_cond"].shape == (2,)
    for k in ("ref_image", "tgt_image", "ref_pose", "tgt_pose", "clip_image"):
        assert b[k].dtype == np.float32, k
    assert b["drop_cond"].dtype == np.bool_
    assert -1.0 <= b["ref_image"].min() and b["tgt_image"].max() <= 1.0
    assert 0.0 <= b["tgt_pose"].min() and b["tgt_pose"].max() <= 1.0 and b["tgt_pose"].max() > 0


def tfds_source(out, split):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(out).as_data_source(split=split)


def _stored(out, split="train"):
    src = sources.open_tfds(out, split)
    return [src[i] for i in range(len(src))]


def test_ubc_fashion_builds_and_loads(tmp_path, fakes):
    raw = fakes.make_ubc(str(tmp_path / "raw"))
    out = build.build("ubc_fashion", str(tmp_path / "out"), raw)
    assert out.endswith(os.path.join("ubc_fashion", "1.0.0"))
    train = _stored(out)
    assert sorted(r["video_id"] for r in train) == ["91-0000", "91-0001", "91-0002"]
    assert len(_stored(out, "test")) == 1
    r = train[1]
    assert len(r["frames_jpeg"]) == fakes.T and isinstance(r["frames_jpeg"][0], bytes)
    kp = np.asarray(r["keypoints"])
    assert kp.shape == (fakes.T, 133, 3) and kp.dtype == np.float32
    assert (r["height"], r["width"], r["num_frames"]) == (fakes.H, fakes.W, fakes.T)
    assert r["fps"] == pytest.approx(8.0)
    np.testing.assert_allclose(kp, fakes.keypoints_for(1))
    # Frames come back in order (colour-coded: G = 10 + 20 t) and from the right video (R = 40 + 40 v).
    from PIL import Image
    import io

    for t in (0, 3, 5):
        px = np.asarray(Image.open(io.BytesIO(r["frames_jpeg"][t]))).reshape(-1, 3).mean(0)
        assert abs(px[0] - 80) < 4 and abs(px[1] - (10 + 20 * t)) < 4, (t, px)
    # One record per frame on disk, and the video index that regroups them.
    assert len(tfds_source(out, "train")) == 3 * fakes.T
    assert os.path.exists(os.path.join(out, "video_index.json"))
    _check_video_batch(next(loader.make_train_iterator(_loader_config(out), seed=0, process_index=0,
                                                       process_count=1)))
    _check_video_batch(next(loader.make_train_iterator(_loader_config(out, "video"), seed=0, process_index=0,
                                                       process_count=1)), f=3)
    assert "tensorflow" not in sys.modules


def test_ubc_fashion_without_split_lists(tmp_path, fakes):
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=2, n_test=1, lists=False)
    out = build.build("ubc_fashion", str(tmp_path / "out"), raw)
    assert len(_stored(out)) == 2 and len(_stored(out, "test")) == 1


def test_tiktok_frame_folders_and_colour_conversions(tmp_path, fakes):
    raw = fakes.make_tiktok(str(tmp_path / "raw"), n=3, modes=("RGB", "RGBA", "L"))
    out = build.build("tiktok", str(tmp_path / "out"), raw, num_workers=3)  # threads share the counters
    recs = {r["video_id"]: r for r in _stored(out)}
    assert sorted(recs) == ["00001", "00002", "00003"]
    assert recs["00001"]["fps"] == 0.0
    meta = sources.dataset_metadata(out)
    assert meta["conversions"]["train"] == {"RGBA->RGB": fakes.T, "L->RGB": fakes.T}
    _check_video_batch(next(loader.make_train_iterator(_loader_config(out), seed=1, process_index=0,
                                                       process_count=1)))


def test_tiktok_split_lists(tmp_path, fakes):
    raw = fakes.make_tiktok(str(tmp_path / "raw"), n=3)
    for split, ids in (("train", "00001\n00002\n"), ("test", "00003\n")):
        (tmp_path / "raw" / f"{split}.txt").write_text(ids)
    out = build.build("tiktok", str(tmp_path / "out"), raw)
    assert [r["video_id"] for r in _stored(out, "test")] == ["00003"]


def test_video_folder_nested_and_test_list(tmp_path, fakes):
    raw = fakes.make_video_folder(str(tmp_path / "raw"), n=3)
    out = build.build("video_folder", str(tmp_path / "out"), raw)
    assert sorted(r["video_id"] for r in _stored(out)) == ["dancer_b/take1/clip0", "dancer_b/take1/clip2"]
    assert [r["video_id"] for r in _stored(out, "test")] == ["dancer_a/clip1"]


def test_viton_hd_splits_and_tryon_batch(tmp_path, fakes):
    raw = fakes.make_viton(str(tmp_path / "raw"))
    out = build.build("viton_hd", str(tmp_path / "out"), raw)
    paired, unpaired = _stored(out, "test_paired"), _stored(out, "test_unpaired")
    assert all(r["id"] == r["cloth_id"] for r in paired)
    assert all(r["id"] != r["cloth_id"] for r in unpaired) and len(unpaired) == 2
    r = {x["id"]: x for x in _stored(out)}["00000_00"]
    assert r["has_keypoints"] and r["keypoints"].shape == (133, 3) and r["person_jpeg"][:2] == b"\xff\xd8"
    c = _loader_config(out, "tryon", crop_scale=(1.0, 1.0), flip=False, resolution=(32, 24))
    b = next(loader.make_train_iterator(c, seed=0, process_index=0, process_count=1))
    assert b["tryon_mask"].shape == (2, 32, 24, 1) and b["tryon_mask"].dtype == np.float32
    assert set(np.unique(b["tryon_mask"])) == {0.0, 1.0}
    assert b["tryon_mask"][:, 8:24, 6:18].min() == 1.0 and b["tryon_mask"][:, :8].max() == 0.0
    assert b["ref_image"].shape == b["tgt_image"].shape == (2, 32, 24, 3) and not b["ref_pose"].any()


def test_synthetic_cli(tmp_path, capsys):
    assert build.main(["--dataset", "synthetic", "--data_dir", str(tmp_path), "--num_videos", "3",
                       "--num_test_videos", "1", "--num_frames", "5", "--height", "16", "--width", "24"]) == 0
    out = str(tmp_path / "synthetic" / "1.0.0")
    assert "built synthetic" in capsys.readouterr().out
    recs = _stored(out)
    assert len(recs) == 3 and np.asarray(recs[0]["keypoints"]).shape == (5, 133, 3)
    meta = json.loads((tmp_path / "synthetic" / "1.0.0" / "metadata.json").read_text())
    assert meta["num_skipped"] == {}
    # The loader also finds the newest version from the root and the dataset name.
    c = _loader_config(str(tmp_path), name="synthetic", min_margin=1)
    info = loader.describe(c)
    assert info["dataset_dir"] == out and info["num_skipped"] == {}
    _check_video_batch(next(loader.make_train_iterator(c, seed=0, process_index=0, process_count=1)))


def test_a_sample_reads_only_the_frames_it_uses(tmp_path, fakes):
    import tensorflow_datasets as tfds

    from humandiff.data import examples

    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=1, n_test=0)
    out = build.build("ubc_fashion", str(tmp_path / "out"), raw)
    reads = []

    class Counting:
        def __init__(self, src):
            self.src = src

        def __len__(self):
            return len(self.src)

        def __getitem__(self, i):
            reads.append(i)
            return self.src[i]

    videos = sources.FrameVideos(Counting(tfds.builder_from_directory(out).as_data_source("train")), out, "train")
    op = examples.VideoExampleOp(examples.ExampleOptions(height=16, width=16, min_margin=2))
    example = op(videos[0], np.random.default_rng(0))
    assert example["tgt_image"].shape == (16, 16, 3) and len(reads) == 2  # reference + target frame records


def test_stale_video_index_is_detected(tmp_path, fakes):
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=2, n_test=0)
    out = build.build("ubc_fashion", str(tmp_path / "out"), raw)
    path = os.path.join(out, "video_index-train.npy")
    np.save(path, np.load(path)[::-1])  # records no longer in (video, frame) order
    video = sources.open_tfds(out, "train")[0]
    with pytest.raises(ValueError, match="video index out of date"):
        video["frames_jpeg"][0]


def test_max_short_side_shrinks_frames_and_keypoints(tmp_path, fakes):
    raw = fakes.make_ubc(str(tmp_path / "raw"), n_train=1, n_test=0)
    out = build.build("ubc_fashion", str(tmp_path / "out"), raw, max_short_side=12)  # 24x32 -> 12x16
    video = sources.open_tfds(out, "train")[0]
    from PIL import Image
    import io

    assert (video["height"], video["width"]) == (12, 16)
    assert Image.open(io.BytesIO(video["frames_jpeg"][0])).size == (16, 12)
    np.testing.assert_allclose(np.asarray(video["keypoints"])[..., :2],
                               (fakes.keypoints_for(0)[..., :2] + 0.5) * 0.5 - 0.5, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="--max_short_side applies to recorded videos"):
        build.build("synthetic", str(tmp_path / "s"), max_short_side=8)
