"""Try-on from `python -m humandiff.sample --person --garment --mask`: the person is kept outside the mask, the
garment is the reference; one frame also gives grid.png; wrong uses are one `error:` line."""

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import require_parts, tiny_config, write_checkpoint

require_parts()

from humandiff import sample  # noqa: E402

SIZE = 16  # the tiny config's resolution


@pytest.fixture(scope="module")
def tryon_ckpt(tmp_path_factory):
    """A tiny random pixel-space model saved as a try-on run (task=tryon, no reference pose, as sd15_tryon)."""
    workdir = tmp_path_factory.mktemp("tryon_workdir")
    config = tiny_config()
    config.task = "tryon"
    config.model.use_ref_pose = False
    write_checkpoint(workdir, config)
    return str(workdir)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(9)
    person = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(person).save(tmp_path / "person.png")
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "garment.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:12, 3:13] = 255  # the torso: generated; everything else is the person
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path, person, mask > 0


def _args(root, ckpt, *extra):
    return ["--checkpoint", ckpt, "--person", str(root / "person.png"), "--garment", str(root / "garment.png"),
            "--mask", str(root / "mask.png"), "--out", str(root / "out"), *extra]


def test_tryon_keeps_the_person_outside_the_mask(tryon_ckpt, files):
    root, person, inside = files
    assert sample.main(_args(root, tryon_ckpt)) == 0
    result = np.asarray(Image.open(root / "out" / "frames" / "frame_0000.png"))
    # Pixel space: the sampler holds the clean person outside the mask at every step and after the last one
    # (x * M + person * (1 - M) with M = 0), so after the uint8 round trip the kept pixels are the person's
    # exactly (measured: max difference 0).
    np.testing.assert_array_equal(result[~inside], person[~inside])
    assert np.abs(result[inside].astype(int) - person[inside]).mean() > 10  # inside: generated, not copied
    grid = np.asarray(Image.open(root / "out" / "grid.png"))  # garment | person (mask greyed) | result
    assert grid.shape == (SIZE, 3 * SIZE, 3)
    np.testing.assert_array_equal(grid[:, 2 * SIZE:], result)
    meta = json.loads((root / "out" / "metadata.json").read_text())
    assert meta["mode"] == "tryon" and meta["settings"]["task"] == {"value": "tryon", "from": "model"}
    assert meta["num_frames"] == 1


@pytest.mark.parametrize("case", ["missing_mask", "not_a_tryon_model", "with_reference"])
def test_tryon_misuse_is_one_error_line(case, tryon_ckpt, tiny_ckpt, files, capsys):
    root = files[0]
    args, named = _args(root, tryon_ckpt), []
    if case == "missing_mask":
        i = args.index("--mask")
        del args[i:i + 2]
        named = ["missing --mask"]
    elif case == "not_a_tryon_model":
        args = _args(root, tiny_ckpt[0])
        named = ["task=tryon", "task='image'", "--reference and --poses"]
    else:
        args += ["--reference", str(root / "person.png")]
        named = ["--reference is for animation"]
    with pytest.raises(SystemExit) as e:
        sample.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("error:") == 1, err
    assert all(n in err for n in named), err
    assert not (root / "out").exists()
