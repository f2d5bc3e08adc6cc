"""`python -m humandiff.app`, the web demo, tested for real: started on 127.0.0.1 with a tiny checkpoint and driven by a
headless Chromium (Selenium) that uploads a reference image and a keypoint file, clicks Generate and finds the result
video. Its frames are those of the sampler CLI's library call (`sample.prepare_inputs` + `sample.animate`) with the
model's own steps / guidance / sampler and the seed typed in the page; bad input shows the one-line message.

Skips only when no Chromium + chromedriver is installed (`.ci/run` installs them); gradio and selenium come with the
`[test]` extra."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request

import numpy as np
import pytest
from PIL import Image

from .conftest import ROOT, require_parts

require_parts()

import jax  # noqa: E402

from humandiff import app, media, sample  # noqa: E402
from humandiff.data import synthetic  # noqa: E402

SIZE = 16
SEED = 7
FRAMES = 2


def _browser():
    """(chromium, chromedriver) paths, or None when either is missing."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root):
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "ref.png")
    media.save_keypoints(root / "poses.npy", synthetic.make_video(3, FRAMES, SIZE, SIZE)["keypoints"])
    np.save(root / "bad.npy", np.zeros((FRAMES, 17, 3), np.float32))  # 17 points: not COCO-WholeBody
    return str(root / "ref.png"), str(root / "poses.npy"), str(root / "bad.npy")


@pytest.fixture
def server(tiny_ckpt, tmp_path):
    """The demo CLI in a subprocess on a free port: (url, --out folder); stopped afterwards."""
    port, out = _free_port(), tmp_path / "app_out"
    env = dict(os.environ, PYTHONPATH=ROOT, GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gr"),
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "humandiff.app", "--checkpoint", tiny_ckpt[0], "--port", str(port),
                             "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300  # a deadline for start-up, not a timing assertion
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"the app exited with status {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not start serving"
            time.sleep(0.5)
        yield url, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _driver(paths):
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.binary_location = paths[0]
    return webdriver.Chrome(options=options, service=Service(paths[1]))


def _read_mp4(path):
    frames, _ = media.read_video(str(path))
    return np.stack(frames)


def _shows(driver, elem_id, name):
    """Whether the component `elem_id` lists the uploaded file `name` (the page splits stem and extension)."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    return name in "".join(driver.find_element(By.CSS_SELECTOR, f"#{elem_id}").text.split())


def _toast(driver):
    """The text of the error message the page shows (Gradio's toast), or None."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    return next((t.text for t in driver.find_elements(By.CSS_SELECTOR, ".toast-body") if t.text.strip()), None)


def _outcome(driver, after=None):
    """("video", src) once the result video has a src other than `after`, ("error", message or "") once the request
    failed (the result shows Gradio's error status; the message is the toast's text, "" without one), else None."""
    from selenium.common.exceptions import TimeoutException  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    if _toast(driver) or driver.find_elements(By.CSS_SELECTOR, "#result .error"):
        try:  # the toast may come a moment after the error status
            return "error", WebDriverWait(driver, 10).until(_toast)
        except TimeoutException:
            return "error", ""
    srcs = [v.get_attribute("src") for v in driver.find_elements(By.CSS_SELECTOR, "#result video")]
    src = next((s for s in srcs if s and s != after), None)
    return ("video", src) if src else None


def test_the_demo_in_a_browser_gives_the_cli_frames_and_one_line_errors(tiny_ckpt, tmp_path, request):
    paths = _browser()
    if paths is None:
        pytest.skip("no chromium + chromedriver installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.common.keys import Keys  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    workdir, config = tiny_ckpt[:2]
    reference, poses, bad = _files(tmp_path)
    url, out = request.getfixturevalue("server")
    driver = _driver(paths)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 300)  # deadlines, not timing assertions
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reference input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#reference input[type=file]").send_keys(reference)
        driver.find_element(By.CSS_SELECTOR, "#poses input[type=file]").send_keys(poses)
        # The tiny model was trained with the reference pose: its first pose frame stands in for it.
        driver.find_element(By.CSS_SELECTOR, "#ref_pose input[type=file]").send_keys(poses)
        seed = driver.find_element(By.CSS_SELECTOR, "#seed input")
        seed.send_keys(Keys.CONTROL, "a")
        seed.send_keys(str(SEED), Keys.TAB)
        wait.until(lambda d: _shows(d, "poses", "poses.npy"))
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        kind, src = wait.until(_outcome)
        assert kind == "video" and src.startswith(url), (kind, src)
        with urllib.request.urlopen(src, timeout=30) as r:  # the mp4 the page plays
            (tmp_path / "served.mp4").write_bytes(r.read())

        # Bad input: a keypoint file that is not COCO-WholeBody -> the CLI's one line, no traceback.
        driver.find_element(By.CSS_SELECTOR, "#poses button[aria-label='Clear']").click()
        driver.find_element(By.CSS_SELECTOR, "#poses input[type=file]").send_keys(bad)
        wait.until(lambda d: _shows(d, "poses", "bad.npy"))
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        kind, toast = wait.until(lambda d: _outcome(d, after=src))
        page = driver.page_source
    finally:
        driver.quit()
    assert kind == "error" and toast, f"no error message shown: {(kind, toast)}"
    line = toast.splitlines()[-1]
    assert line.endswith("bad.npy: expected COCO-WholeBody keypoints of shape [T, 133, 3], got shape (2, 17, 3)"), toast
    assert "Traceback" not in page and "Traceback" not in toast

    # The same request through the CLI's library calls, with the model's own sampler settings.
    args = sample.parse_args(["--checkpoint", workdir, "--reference", reference, "--poses", poses,
                              "--ref-pose", poses, "--out", str(tmp_path / "direct")])
    inputs, images = sample.prepare(args, False, tuple(config.data.resolution))
    want, _ = sample.animate(sample.load(workdir), inputs, images["reference"], steps=config.sample.num_steps,
                             guidance=config.sample.guidance_scale, sampler=config.sample.sampler, seed=SEED)
    assert want.shape == (FRAMES, SIZE, SIZE, 3) and want.std() > 0
    runs = [out / p for p in os.listdir(out) if p.startswith("run-")]
    assert len(runs) == 1, runs  # the good request's; the refused one left no folder
    ran = runs[0]
    meta = json.loads((ran / "metadata.json").read_text())
    assert (meta["seed"], meta["steps"], meta["guidance"]) == (SEED, config.sample.num_steps,
                                                              config.sample.guidance_scale)
    got = np.stack([np.asarray(Image.open(ran / "frames" / f"frame_{i:04d}.png")) for i in range(FRAMES)])
    np.testing.assert_array_equal(got, want)  # the same program on the same inputs: bit-identical frames
    media.write_mp4(str(tmp_path / "direct.mp4"), want, images["fps"])
    np.testing.assert_array_equal(_read_mp4(tmp_path / "served.mp4"), _read_mp4(tmp_path / "direct.mp4"))


def test_defaults_are_the_models_own():
    """The settings the model records (a workdir's config or an export's model_index.json, as `Loaded.settings`),
    else the CLI's fallbacks: `sample.resolve_settings`, the CLI's own."""
    settings = {"sampler": "dpm++", "num_steps": 5, "guidance_scale": 1.25, "resolution": [32, 48]}
    got = app.defaults(types.SimpleNamespace(config=None, settings=settings))
    assert got == {"sampler": "dpmsolver++", "steps": 5, "guidance": 1.25, "resolution": (32, 48)}
    got = app.defaults(types.SimpleNamespace(config=None, settings={}))
    assert got == {"sampler": "ddim", "steps": 25, "guidance": 3.5, "resolution": None}


def test_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        app.main(["--checkpoint", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: checkpoint folder not found: {tmp_path / 'nope'}"
