"""One command per dataset on the fake raw folders (data_pipelines.fake_layouts, the
real datasets' layouts filled with synthetic figures), then a batch through the grain loader."""

import numpy as np
import pytest

from data_pipelines import build, fake_layouts
from humandiff.data import loader, sources

WRITERS = {
    "tiktok": lambda root: fake_layouts.write_tiktok(root, num_videos=2, num_frames=6, height=32, width=24),
    "ubc_fashion": lambda root: fake_layouts.write_ubc_fashion(root, num_train=2, num_test=1, num_frames=6,
                                                               height=32, width=24),
    "video_folder": lambda root: fake_layouts.write_video_folder(root, num_videos=2, num_frames=6, height=32,
                                                                 width=24),
    "viton_hd": lambda root: fake_layouts.write_viton_hd(root, num_train=2, num_test=2, height=32, width=24),
}


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_build_command_on_fake_layout_then_load(tmp_path, capsys, dataset):
    raw = WRITERS[dataset](str(tmp_path / "raw"))
    assert build.main(["--dataset", dataset, "--manual_dir", raw, "--data_dir", str(tmp_path / "out")]) == 0
    assert f"built {dataset}" in capsys.readouterr().out
    c = loader.default_config()
    c.update(source="tfds", data_dir=str(tmp_path / "out"), name=dataset, resolution=(16, 12), batch_size=2,
             min_margin=2, num_threads=1, prefetch=2)
    if dataset == "viton_hd":
        c.stage = "tryon"
    batch = next(loader.make_train_iterator(c, seed=0, process_index=0, process_count=1))
    assert batch["ref_image"].shape == batch["tgt_image"].shape == (2, 16, 12, 3)
    assert batch["ref_pose"].shape == batch["tgt_pose"].shape == (2, 16, 12, 3)
    assert batch["clip_image"].shape == (2, 224, 224, 3) and batch["drop_cond"].dtype == np.bool_
    for k in ("ref_image", "tgt_image"):
        assert batch[k].dtype == np.float32 and -1.0 <= batch[k].min() < batch[k].max() <= 1.0
    assert 0.0 <= batch["tgt_pose"].min() and batch["tgt_pose"].max() <= 1.0
    assert batch["tgt_pose"].max() > 0.0  # a skeleton was drawn from the stored keypoints
    if dataset == "viton_hd":
        assert batch["tryon_mask"].shape == (2, 16, 12, 1) and batch["tryon_mask"].max() == 1.0
    else:
        video = sources.open_tfds(str(tmp_path / "out"), "train", dataset)[0]
        kp = np.asarray(video["keypoints"])
        seen = kp[kp[..., 2] > 0]
        assert kp.shape == (6, 133, 3) and len(seen) and seen[:, 0].max() < 24 and seen[:, 1].max() < 32  # pixels
