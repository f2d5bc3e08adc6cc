"""DWPose extraction end to end on tiny ONNX models with the real models' signatures."""

import logging
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from data_pipelines import fake_layouts
from data_pipelines.pose import dwpose, extract
from humandiff import media

H, W = 120, 160  # frame size; the letterbox ratio to 640x640 is 4
NUM_ANCHORS = sum((640 // s) ** 2 for s in (8, 16, 32))  # 8400
BX = (np.arange(133) * 4 + 20) % 560 + 8  # SimCC peak bins per keypoint
BY = (np.arange(133) * 5 + 30) % 750 + 8


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _anchor(cx, cy, w, h, obj, cls):
    """Raw YOLOX row for a stride-8 anchor whose decoded box is (cx, cy, w, h) in letterbox pixels."""
    gx, gy = cx // 8, cy // 8
    row = np.zeros(85, np.float32)
    row[:4] = [cx / 8 - gx, cy / 8 - gy, np.log(w / 8), np.log(h / 8)]
    row[4], row[5] = obj, cls
    return int(gy * 80 + gx), row


def _detector(path, people=True):
    """yolox_l.onnx signature: images [1,3,640,640] -> output [1,8400,85]; constant detections."""
    const = np.zeros((1, NUM_ANCHORS, 85), np.float32)
    if people:
        for cx, cy, score in ((320, 240, (0.9, 0.95)), (480, 240, (0.8, 0.9))):  # frame boxes A and B
            i, row = _anchor(cx, cy, 160, 320, *score)
            const[0, i] = row
        i, row = _anchor(200, 200, 80, 80, 0.99, 0.05)  # a confident non-person: ignored
        const[0, i] = row
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["m3"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "dets"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "yolox_fake",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, NUM_ANCHORS, 85])],
        [numpy_helper.from_array(const, "dets"), numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
         numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    return _save(graph, path)


def _pose(path):
    """dw-ll_ucoco_384.onnx signature: input [N,3,384,288] -> simcc_x [N,133,576], simcc_y [N,133,768].

    Peaks sit at fixed bins; their height grows with the crop's mean brightness, so the brighter
    person scores higher.
    """
    cx = np.full((1, 133, 576), 0.01, np.float32)
    cy = np.full((1, 133, 768), 0.01, np.float32)
    cx[0, np.arange(133), BX] = 0.5
    cy[0, np.arange(133), BY] = 0.4
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["m3"]),
        helper.make_node("Add", ["m3", "three"], ["s"]),
        helper.make_node("Mul", ["cx", "s"], ["simcc_x"]),
        helper.make_node("Mul", ["cy", "s"], ["simcc_y"]),
    ]
    graph = helper.make_graph(
        nodes, "dwpose_fake",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 384, 288])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["N", 133, 576]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["N", 133, 768])],
        [numpy_helper.from_array(cx, "cx"), numpy_helper.from_array(cy, "cy"),
         numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
         numpy_helper.from_array(np.full((), 3.0, np.float32), "three")])
    return _save(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return _detector(str(d / "yolox_l.onnx")), _pose(str(d / "dw-ll_ucoco_384.onnx")), d


def _frames(t=3):
    f = np.full((t, H, W, 3), 120, np.uint8)
    f[:, 20:100, 60:100] = 0  # person A (dark)
    f[:, 20:100, 100:140] = 255  # person B (bright)
    return f


def _expected(box):
    """Keypoints for SimCC peaks BX/BY decoded in ``box`` (x0, y0, x1, y1): padding 1.25, aspect 3:4."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * 1.25, (y1 - y0) * 1.25
    sw, sh = (w, w / 0.75) if w > h * 0.75 else (h * 0.75, h)
    return np.stack([BX / 2 / 288 * sw + cx - sw / 2, BY / 2 / 384 * sh + cy - sh / 2], -1)


def test_extracts_brightest_person_in_frame_pixels(models):
    det, pose, _ = models
    model = dwpose.DWPose(det, pose, batch_size=4)
    boxes = model.detect(list(_frames(1)))[0]
    np.testing.assert_allclose(boxes[:, :4], [[60, 20, 100, 100], [100, 20, 140, 100]], atol=1e-3)
    np.testing.assert_allclose(boxes[:, 4], [0.855, 0.72], atol=1e-5)
    kp = model(_frames(3))
    assert kp.shape == (3, 133, 3) and kp.dtype == np.float32
    np.testing.assert_allclose(kp[:, :, :2], np.broadcast_to(_expected((100, 20, 140, 100)), (3, 133, 2)),
                               atol=1e-3)  # person B, the higher-scoring one
    assert np.all(kp[..., 2] > 1.0) and np.all(np.isfinite(kp))
    single = model(_frames(1)[0])
    np.testing.assert_allclose(single, kp[0], atol=1e-5)


def test_no_detection_uses_the_whole_frame(models):
    _, pose, d = models
    model = dwpose.DWPose(_detector(str(d / "empty.onnx"), people=False), pose)
    kp = model(_frames(2))
    np.testing.assert_allclose(kp[0, :, :2], _expected((0, 0, W, H)), atol=1e-3)


def test_cuda_request_falling_back_to_cpu_warns_loudly(models, caplog, capsys):
    det, pose, _ = models
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider is available here; no fallback to observe")
    with caplog.at_level(logging.WARNING, logger="data_pipelines.pose.dwpose"):
        model = dwpose.DWPose(det, pose, device="cuda")
    err = capsys.readouterr().err
    assert "WARNING: DWPose asked for CUDAExecutionProvider" in err and "CPUExecutionProvider" in err
    assert any("CPUExecutionProvider" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert model(_frames(1)).shape == (1, 133, 3)  # still works, on the CPU
    dwpose.DWPose(det, pose, device="cpu")
    assert "WARNING" not in capsys.readouterr().err


def test_missing_onnx_file_and_bad_frames(models, tmp_path):
    det, pose, _ = models
    with pytest.raises(FileNotFoundError, match=r"ONNX model file not found: .*nothere.onnx"):
        dwpose.DWPose(det, str(tmp_path / "nothere.onnx"))
    with pytest.raises(ValueError, match="device must be"):
        dwpose.DWPose(det, pose, device="tpu")
    with pytest.raises(ValueError, match=r"RGB frames \[T, H, W, 3\]"):
        dwpose.DWPose(det, pose)(np.zeros((2, 8, 8), np.uint8))


def test_cli_on_mp4_and_frame_folder(models, tmp_path, capsys):
    det, pose, _ = models
    video = str(tmp_path / "clip.mp4")
    media.write_mp4(video, _frames(5))
    out = str(tmp_path / "poses" / "clip.npy")
    os.makedirs(os.path.dirname(out))
    assert extract.main(["--video", video, "--det", det, "--pose", pose, "--out", out, "--chunk", "2"]) == 0
    kp = media.load_keypoints(out, num_frames=5)
    np.testing.assert_allclose(kp[:, :, :2], np.broadcast_to(_expected((100, 20, 140, 100)), (5, 133, 2)),
                               atol=1e-3)
    base = fake_layouts.write_tiktok(str(tmp_path / "tt"), num_videos=1, num_frames=2, height=H, width=W)
    written = media.load_keypoints(os.path.join(base, "00001.npy"))
    os.remove(os.path.join(base, "00001.npy"))
    folder = os.path.join(base, "00001")  # TikTok layout: frames in 00001/images/, pose beside the folder
    assert extract.main(["--video", folder, "--det", det, "--pose", pose]) == 0
    got = media.load_keypoints(os.path.join(base, "00001.npy"), num_frames=2)
    assert got.shape == written.shape == (2, 133, 3)
    assert extract.main(["--video", folder, video, "--det", det, "--pose", pose, "--skip_existing"]) == 0
    capsys.readouterr()
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "no_frames").mkdir()
    for name, expected in (("none.mp4", "video not found"), ("broken.mp4", "broken.mp4: cannot decode video"),
                           ("empty.mp4", "empty.mp4"), ("no_frames", "no_frames")):
        with pytest.raises(SystemExit) as e:  # humandiff.cli: one error line, status 2
            extract.main(["--video", str(tmp_path / name), "--det", det, "--pose", pose])
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err, err
