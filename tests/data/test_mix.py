"""Several built datasets mixed in one run (`data.name="tiktok,ubc_fashion"`, `data.weights`): proportions,
determinism, per-process shards, exact resume, and start-up errors that name the key, the value and the path.

The fake TikTok set is built portrait (32x24) and the fake UBC-Fashion set landscape (24x32); loaded with
crop_mode="fit" into 16x16 the first gets black (-1) columns and the second black rows, so every example
tells which dataset it came from.
"""

import sys

import numpy as np
import pytest

from data_pipelines import build, fake_layouts
from humandiff import config_lib
from humandiff.config_lib import ConfigError
from humandiff.data import loader, mixture, sources
from humandiff.training import input as train_input


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build output root holding tiktok/1.0.0 (3 portrait videos) and ubc_fashion/1.0.0 (3 landscape)."""
    root = tmp_path_factory.mktemp("mix")
    raw = fake_layouts.write_tiktok(str(root / "raw_tiktok"), num_videos=3, num_frames=6, height=32, width=24)
    build.build("tiktok", str(root / "out"), raw)
    raw = fake_layouts.write_ubc_fashion(str(root / "raw_ubc"), num_train=3, num_test=1, num_frames=6,
                                         height=24, width=32)
    build.build("ubc_fashion", str(root / "out"), raw)
    return str(root / "out")


def _train_config(data_dir, weights=(), batch_size=8):
    """configs/sd15_image.py (its default TikTok + UBC-Fashion mixture) with a tiny, letterboxing input."""
    config = config_lib.load(f"configs/sd15_image.py:data_dir={data_dir}")
    config.batch_size, config.seed = batch_size, 3
    config.data.update(dict(weights=weights, resolution=(16, 16), min_margin=2, num_threads=0, prefetch=0,
                            flip=False, drop_prob=0.0))
    config.data.crop_mode, config.data.crop_scale = "fit", (1.0, 1.0)
    return config


def _which(images):
    """Dataset of each [B, 16, 16, 3] image: 0 = tiktok (black columns), 1 = ubc_fashion (black rows)."""
    black = images == -1.0
    cols = black.all(axis=(1, 3)).sum(-1)
    rows = black.all(axis=(2, 3)).sum(-1)
    kind = np.where((cols >= 2) & (rows == 0), 0, np.where((rows >= 2) & (cols == 0), 1, -1))
    assert (kind >= 0).all(), (cols, rows)
    return kind


def _tiktok_share(it, num_batches):
    kinds = np.concatenate([_which(next(it)["tgt_image"]) for _ in range(num_batches)])
    return float((kinds == 0).mean()), kinds


def test_mixture_follows_the_weights(built):
    config = _train_config(built, weights=(0.25, 0.75))
    assert config.data.name == "tiktok,ubc_fashion"  # the stage-1 default
    config_lib.validate(config)
    share, kinds = _tiktok_share(train_input.train_iterator(config, process_index=0, process_count=1), 32)
    assert abs(share - 0.25) < 0.06, share  # 256 examples of a block of 1000 (exact per block)
    _, again = _tiktok_share(train_input.train_iterator(config, process_index=0, process_count=1), 8)
    np.testing.assert_array_equal(kinds[:64], again)  # deterministic
    assert len({tuple(k) for k in kinds.reshape(32, 8)}) > 4  # batches are random draws, not one fixed pattern
    equal, _ = _tiktok_share(train_input.train_iterator(_train_config(built), process_index=0, process_count=1), 16)
    assert abs(equal - 0.5) < 0.1, equal  # weights () = equal, 128 examples
    single = _train_config(built)
    single.data.name = "ubc_fashion"
    only, _ = _tiktok_share(train_input.train_iterator(single, process_index=0, process_count=1), 4)
    assert only == 0.0


def test_mixture_state_restore_gives_identical_next_batch(built, tmp_path):
    grain = pytest.importorskip("grain")
    ocp = pytest.importorskip("orbax.checkpoint")
    config = _train_config(built, weights=(1, 3), batch_size=4)
    it = train_input.train_iterator(config, process_index=0, process_count=1)
    for _ in range(3):
        next(it)
    state = it.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = [next(it) for _ in range(2)]
    fresh = train_input.train_iterator(config, process_index=0, process_count=1)
    fresh.set_state(state)
    restored = train_input.train_iterator(config, process_index=0, process_count=1)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
    for other in (fresh, restored):
        for w in want:
            got = next(other)
            assert sorted(got) == sorted(w)
            for k in w:
                np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    config.seed = 4
    other_seed = next(train_input.train_iterator(config, process_index=0, process_count=1))
    first = next(train_input.train_iterator(_train_config(built, weights=(1, 3), batch_size=4), process_index=0,
                                            process_count=1))
    assert not np.array_equal(other_seed["tgt_image"], first["tgt_image"])


def _coded(offset, n=4, t=8):
    """In-memory videos whose flat red channel encodes a global video number (offset + v)."""
    out = []
    for v in range(n):
        frames = np.full((t, 12, 12, 3), 128, np.uint8)
        frames[..., 0] = 20 + 10 * (offset + v)
        kp = np.concatenate([np.full((t, 133, 2), 6.0), np.ones((t, 133, 1))], -1).astype(np.float32)
        out.append({"video_id": f"v{offset + v}", "frames": frames, "keypoints": kp, "fps": 8.0})
    return out


def test_each_dataset_is_sharded_over_processes():
    c = loader.default_config()
    c.update(resolution=(8, 8), batch_size=2, min_margin=1, num_threads=0, prefetch=0, flip=False, drop_prob=0.0)
    mix = loader.Mixture([_coded(0), _coded(4)], [1.0, 1.0], ("a", "b"))
    seen = []
    for index in range(2):
        it = loader.make_train_iterator(c, seed=1, process_index=index, process_count=2, source=mix)
        red = np.concatenate([next(it)["tgt_image"][..., 0].mean(axis=(1, 2)) for _ in range(40)])
        seen.append(set(int(v) for v in np.rint(((red + 1) * 127.5 - 20) / 10)))
    assert seen[0] == {0, 2, 4, 6} and seen[1] == {1, 3, 5, 7}  # two videos of each dataset per process
    with pytest.raises(ValueError, match="dataset b: 1 records cannot be split over 2 processes"):
        loader.build_dataset(loader.Mixture([_coded(0), _coded(4, n=1)], [1, 1], ("a", "b")), c, seed=1,
                             shard=loader.shard_options(0, 2))
    with pytest.raises(ValueError, match=r"needs one weight > 0 each, got \(1, 0\)"):
        loader.Mixture([_coded(0), _coded(4)], [1, 0], ("a", "b"))


@pytest.mark.parametrize("name, weights, message", [
    ("tiktok,ubc", (), r"config.data.name='tiktok,ubc': dataset 'ubc' is unknown"),
    ("tiktok,ubc_fashion", (0.0, 1.0), r"config.data.weights=\(0.0, 1.0\): weight 0.0 of dataset 'tiktok' "
                                       r"must be a number > 0"),
    ("tiktok,ubc_fashion", (-1, 2), r"weight -1 of dataset 'tiktok' must be a number > 0"),
    ("tiktok,ubc_fashion", (0.5,), r"config.data.weights=\(0.5,\): 1 weights for the 2 datasets"),
    ("tiktok,tiktok", (), r"config.data.name='tiktok,tiktok': a dataset is named twice"),
    ("tiktok,video_folder", (), r"config.data.name='tiktok,video_folder': no built dataset at data_dir=.* "
                                r"name='video_folder' \(looked for dataset_info.json in .*/video_folder/<version>\)"),
])
def test_bad_mixtures_are_rejected_at_start_up(built, name, weights, message):
    config = _train_config(built, weights=weights)
    config.data.name = name
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config)


def test_mixture_needs_the_build_root_and_no_tryon(built):
    config = _train_config(built)
    config.data.data_dir = sources.resolve_dataset_dir(built, "tiktok")  # one dataset's version folder
    with pytest.raises(ConfigError, match=r"data.data_dir='.*tiktok/1.0.0' is one dataset's version folder"):
        config_lib.validate(config)
    config = _train_config(built)
    config.task = "tryon"
    with pytest.raises(ConfigError, match="the try-on stage reads one VITON-HD dataset, not a mixture"):
        config_lib.validate(config)
    dc = train_input.data_config(_train_config(built, weights=(2, 0)))
    with pytest.raises(ValueError, match=r"data.weights=\(2, 0\): weight 0 of dataset 'ubc_fashion'"):
        loader.validate_config(dc)
    info = loader.describe(train_input.data_config(_train_config(built, weights=(1, 3))))
    assert info["mixture"] == {"tiktok": 0.25, "ubc_fashion": 0.75} and len(info["dataset_dir"]) == 2
    assert sources.DATASET_NAMES == build.DATASETS


def test_selection_map_exact_per_block_and_even_under_worker_slicing():
    assert mixture.block_counts((0.25, 0.75)) == (250, 750)
    assert mixture.block_counts((1, 1, 1)) == (334, 333, 333) and mixture.block_counts((1, 1e6)) == (1, 999)
    with pytest.raises(ValueError, match=r"mixture weights \(1, 0\)"):
        mixture.block_counts((1, 0))
    sel = mixture.ShuffledProportions([sys.maxsize, sys.maxsize], mixture.block_counts((1, 3)), seed=0)
    first = np.array([sel[k][0] for k in range(3000)])
    assert [(first[b * 1000:(b + 1) * 1000] == 0).sum() for b in range(3)] == [250, 250, 250]
    keys = [sel[k] for k in range(3000)]
    for d, want in ((0, 750), (1, 2250)):  # every index of each dataset used once, in order of appearance
        assert [i for dd, i in keys if dd == d] == list(range(want))
    # grain worker processes take every n-th element: each still sees about the proportions (a fixed
    # interleave of weights (1, 1) would give worker 0 only dataset 0).
    even = mixture.ShuffledProportions([sys.maxsize] * 2, mixture.block_counts((1, 1)), seed=1)
    for worker in range(2):
        share = np.mean([even[k][0] == 0 for k in range(worker, 4000, 2)])
        assert abs(share - 0.5) < 0.05, (worker, share)
    # finite datasets: the stream ends where the first one runs out; every element is valid
    finite = mixture.ShuffledProportions([5, 40], (500, 500), seed=2)
    got = [finite[k] for k in range(len(finite))]
    assert sum(d == 0 for d, _ in got) == 5 and max(i for d, i in got if d == 1) < 40
    with pytest.raises(IndexError, match="out of range"):
        finite[len(finite)]


@pytest.mark.slow  # starts two grain worker processes (~7 s on a loaded 2-core machine)
def test_mixture_with_worker_processes_restores(built):
    config = _train_config(built, weights=(1, 1), batch_size=4)
    config.data.num_workers = 2
    it = train_input.train_iterator(config, process_index=0, process_count=1)
    kinds = np.concatenate([_which(next(it)["tgt_image"]) for _ in range(6)])
    state = it.get_state()
    want = next(it)
    it.close()
    fresh = train_input.train_iterator(config, process_index=0, process_count=1)
    fresh.set_state(state)
    got = next(fresh)
    fresh.close()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert 0 < (kinds == 0).sum() < len(kinds)  # both datasets reach the batches through the workers
