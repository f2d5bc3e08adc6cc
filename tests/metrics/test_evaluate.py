"""`python -m humandiff.evaluate` on generated videos: the table, the JSON, skipped metrics and bad inputs.

Feature networks get random Flax weights written in the converted layout (no torch needed) and run at small input
sizes through `suite.evaluate` so the whole path (resize, clips, features, Fréchet) runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os

import av
import jax
import numpy as np
import pytest
from PIL import Image

from humandiff import evaluate
from humandiff.metrics import convert, suite, weights
from humandiff.weights import io

H = W = 32
T = 16


def _video(seed: int, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    frames = []
    for t in range(T):
        cx, cy = 8 + t + seed % 5, 12 + (seed * 3) % 9
        f = np.stack([xx * 7.0, yy * 6.0 + 10 * seed, np.full((H, W), 60.0 + 9 * t)], -1)
        f[(xx - cx) ** 2 + (yy - cy) ** 2 < 30] = (230, 60 + 5 * seed, 40)
        frames.append(np.clip(f + noise * rng.normal(size=f.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def _write_frames(folder, frames):
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(folder, f"{i:04d}.png"))


def _write_mp4(path, frames):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    gt, pred = root / "gt", root / "pred"
    for i in range(3):
        _write_frames(gt / f"{i:05d}", _video(i))
        os.makedirs(pred, exist_ok=True)
        _write_mp4(pred / f"{i:05d}.mp4", _video(i, noise=12.0))
    return root


def _random_flax_weights(net: str, path: str, seed: int) -> None:
    module, example = convert.build_net(net)
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *example)
    rng = np.random.default_rng(seed)
    flat = {}
    for k, s in io.flatten(shapes["params"]).items():
        leaf = k.rsplit("/", 1)[-1]
        if leaf == "kernel":
            arr = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
            arr = np.abs(arr) if net == "lpips" and k.startswith("lin") else arr
        elif leaf in ("scale", "var"):
            arr = np.ones(s.shape)
        else:
            arr = np.zeros(s.shape)
        flat[k] = arr.astype(np.float32)
    weights.save_flax(flat, path)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    _random_flax_weights("lpips", str(d / weights.WEIGHT_FILES["lpips"]), 0)
    return str(d)


@pytest.fixture(scope="module")
def all_weights_dir(tmp_path_factory, weights_dir):
    for i, net in enumerate(weights.WEIGHT_FILES):
        path = os.path.join(weights_dir, weights.WEIGHT_FILES[net])
        if not os.path.exists(path):
            _random_flax_weights(net, path, i)
    return weights_dir


def test_cli_table_without_network_weights(data, capsys):
    out = data / "report"
    result = evaluate.main(["--pred", str(data / "pred"), "--gt", str(data / "gt"), "--out", str(out)])
    assert set(result["metrics"]) == {"l1", "psnr", "psnr_star", "ssim"}
    assert set(result["skipped"]) == {"lpips", "fid", "fid_vid", "fvd"}
    assert "lpips_vgg.safetensors" in result["skipped"]["lpips"]
    assert result["num_videos"] == 3 and result["num_frames"] == 3 * T
    m = result["metrics"]
    assert 0 < m["l1"] < 1e-2 and 0.0 < m["ssim"] < 1.0 and m["psnr"] >= m["psnr_star"] > 15
    table = (out / "metrics.md").read_text()
    assert table.startswith("| L1 | PSNR (legacy) | PSNR* | SSIM |")
    assert json.loads((out / "metrics.json").read_text())["metrics"] == pytest.approx(m)
    assert "| L1 |" in capsys.readouterr().out


def test_lpips_network_path(data, weights_dir, tmp_path):
    split = tmp_path / "one_video.txt"
    split.write_text("# a split file: one id per line\n00001\n")
    config = suite.EvalConfig(protocol="disco", weights_dir=weights_dir, metrics=("l1", "lpips"), batch_size=16,
                              split=str(split))
    result = suite.evaluate(str(data / "pred"), str(data / "gt"), config)
    assert list(result["metrics"]) == ["l1", "lpips"] and not result["skipped"]
    assert result["videos"] == ["00001"] and result["num_frames"] == T
    assert result["metrics"]["lpips"] > 0
    same = suite.evaluate(str(data / "gt"), str(data / "gt"), config)
    assert abs(same["metrics"]["lpips"]) <= 1e-6


@pytest.mark.slow
def test_image_networks_with_random_weights(data, all_weights_dir):
    weights_dir = all_weights_dir
    # slow: scipy's sqrtm of a 2048x2048 singular product takes ~15 s on a loaded 2-core machine.
    config = suite.EvalConfig(protocol="disco", weights_dir=weights_dir, metrics=("lpips", "fid"), fid_size=75)
    result = suite.evaluate(str(data / "pred"), str(data / "gt"), config)
    assert result["metrics"]["fid"] > 0
    same = suite.evaluate(str(data / "gt"), str(data / "gt"), config)
    assert abs(same["metrics"]["fid"]) <= 1e-6
    std = suite.evaluate(str(data / "pred"), str(data / "gt"),
                         suite.EvalConfig(protocol="standard", weights_dir=weights_dir, metrics=("lpips", "ssim")))
    assert set(std["metrics"]) == {"lpips", "ssim"}


@pytest.mark.slow
def test_all_metrics_with_random_weights(data, all_weights_dir):
    weights_dir = all_weights_dir
    # 8-frame clips at 16 px keep the 3D networks cheap; the default protocol uses 16 frames at 112 / 224 px.
    config = suite.EvalConfig(protocol="disco", weights_dir=weights_dir, fid_size=75, fid_vid_size=16,
                              fvd_size=16, clip_len=8, batch_size=16)
    result = suite.evaluate(str(data / "pred"), str(data / "gt"), config)
    assert list(result["metrics"]) == list(suite.ALL_METRICS) and not result["skipped"]
    assert all(np.isfinite(v) for v in result["metrics"].values())
    md = suite.markdown_table(result)
    assert "| L1 | PSNR (legacy) | PSNR* | SSIM | LPIPS | FID | FID-VID | FVD |" in md
    per_video = suite.evaluate(str(data / "pred"), str(data / "gt"), dataclasses.replace(
        config, metrics=("fid_vid", "fvd"), video_samples="videos"))
    assert all(np.isfinite(v) for v in per_video["metrics"].values())


def _run_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        evaluate.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    err = err[err.index("error:"):].strip()  # after any progress-bar output
    assert "\n" not in err
    return err


def test_bad_inputs_give_one_clear_error(data, tmp_path, capsys):
    gt = str(data / "gt")
    extra = tmp_path / "extra"
    for i in range(4):
        _write_frames(extra / f"{i:05d}", _video(i))
    err = _run_error(["--pred", str(extra), "--gt", gt, "--out", str(tmp_path / "o")], capsys)
    assert "do not match" in err and "00003" in err

    short = tmp_path / "short"
    for i in range(3):
        _write_frames(short / f"{i:05d}", _video(i)[: T - 2 if i == 1 else T])
    err = _run_error(["--pred", str(short), "--gt", gt, "--out", str(tmp_path / "o")], capsys)
    assert "video 00001" in err and f"{T - 2} predicted frames" in err

    big = tmp_path / "big"
    for i in range(3):
        _write_frames(big / f"{i:05d}", np.repeat(np.repeat(_video(i), 2, axis=1), 2, axis=2))
    err = _run_error(["--pred", str(big), "--gt", gt, "--out", str(tmp_path / "o")], capsys)
    assert "64x64" in err and "32x32" in err

    err = _run_error(["--pred", str(data / "pred"), "--gt", gt, "--weights", str(tmp_path), "--metrics", "ssim,fvd"],
                     capsys)
    assert "i3d_400.safetensors" in err and "humandiff.metrics.convert --net i3d" in err

    err = _run_error(["--pred", str(data / "pred"), "--gt", gt, "--split", "tiktok"], capsys)
    assert "00335" in err


def test_named_splits_are_shipped():
    from humandiff.metrics import video_io

    ubc = video_io.read_split("ubc_fashion")
    assert len(ubc) == 100 and len(set(ubc)) == 100 and "91-3003CN5S" in ubc
    assert video_io.read_split("tiktok") == [f"{i:05d}" for i in range(335, 341)]
