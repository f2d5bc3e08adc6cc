"""`model.reference_net="separate"` (the ReferenceNet ablation) end to end on a checkpoint in the trainer's format:
twice the UNet parameters, both UNets exported and read back bit for bit, and sampled from the workdir (the
sample CLI equals the library) and from the export in PyTorch (equal to JAX, and reading its own reference UNet).

The reference UNet's weights are random and independent of the UNet's, so every check that passes through the
reference pass would fail if the shared UNet ran it instead."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from .conftest import rel_err, require_parts, tiny_config, write_checkpoint
from .test_sample_workdir import _inputs

require_parts()
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff import sample, torch_scd  # noqa: E402
from humandiff.checkpoints import export, loading  # noqa: E402
from humandiff.diffusion import pipeline, samplers  # noqa: E402
from humandiff.training import modeling, step  # noqa: E402
from humandiff.weights import io  # noqa: E402


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """(workdir, config, models, ema params, export folder) of a tiny random checkpoint with a reference UNet."""
    workdir = str(tmp_path_factory.mktemp("separate_run"))
    config = tiny_config()
    config.model.reference_net = "separate"
    models, _, ema = write_checkpoint(workdir, config)
    out = str(tmp_path_factory.mktemp("separate_export") / "fp32")
    export.write_export(export.read_checkpoint(workdir, ema=True), out)
    return workdir, config, models, ema, out


def test_twice_the_unet_parameters_exported_and_read_back(separate):
    _, config, models, ema, out = separate
    unet = modeling.count_params(ema["unet"])
    assert modeling.count_params(ema["reference_unet"]) == unet
    shared = jax.eval_shape(lambda: modeling.init_params(models, tiny_config(), jax.random.key(0)))
    assert modeling.count_params(ema) == modeling.count_params(shared) + unet
    index = json.load(open(os.path.join(out, "model_index.json"), encoding="utf-8"))
    assert index["reference_unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["humandiff"]["reference_net"] == "separate"
    _, info = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(out, "reference_unet"),
                                                             output_loading_info=True)
    assert not any(info.values()), info
    got, want = io.flatten(loading.load_trained(out).params), io.flatten(ema)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


def test_samples_from_the_workdir_and_in_pytorch_with_its_own_reference_unet(separate, tmp_path):
    workdir, config, models, ema, out = separate
    inputs = _inputs(tmp_path)
    rc = sample.main(["--checkpoint", workdir, "--reference", str(tmp_path / "ref.png"), "--poses",
                      str(tmp_path / "poses"), "--ref-pose", str(tmp_path / "ref_pose.png"), "--out",
                      str(tmp_path / "out"), "--steps", "3", "--guidance", "2.5", "--seed", "7", "--sampler", "ddim"])
    assert rc == 0
    cfg = pipeline.SamplingConfig(ref_timestep=config.diffusion.ref_timestep, use_ref_pose=True)
    sampler = samplers.make_sampler(step.make_schedule(config).config, "ddim", 3,
                                    spacing=config.sample.timestep_spacing)
    generate = pipeline.make_generator(models, cfg)
    frames = np.asarray(generate(ema, sampler, inputs, jax.random.key(7), 2.5))
    want = np.clip(np.round((frames[0] + 1.0) * 127.5), 0, 255).astype(np.uint8)
    got = np.stack([np.asarray(Image.open(tmp_path / "out" / "frames" / f"frame_{i:04d}.png")) for i in range(2)])
    np.testing.assert_array_equal(got, want)
    shared = np.asarray(generate({k: v for k, v in ema.items() if k != "reference_unet"}, sampler, inputs,
                                 jax.random.key(7), 2.5))
    assert np.abs(shared - frames).max() > 1e-2  # the reference UNet is what the reference pass ran

    # PyTorch from the export: DDIM with the JAX pipeline's initial noise (the first half of split(rng)).
    pipe = torch_scd.load_pipeline(out)
    assert pipe.reference_unet is not None
    loaded = loading.load_trained(out)
    ddim = samplers.make_sampler(loaded.schedule, "ddim", 3, spacing=loaded.spacing, steps_offset=loaded.steps_offset)
    jax_frames = np.asarray(pipeline.make_generator(loaded.models, cfg)(loaded.params, ddim, inputs,
                                                                       jax.random.key(7), 2.5))
    noise = jax.random.normal(jax.random.split(jax.random.key(7))[0], (1, 2, 16, 16, 3), jnp.float32)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, -3)))  # noqa: E731
    run = lambda: np.moveaxis(torch_scd.animate(  # noqa: E731
        pipe, t(inputs["ref_image"]), t(inputs["poses"]), ref_pose=t(inputs["ref_pose"]), num_steps=3, guidance=2.5,
        noise=t(noise)).numpy(), -3, -1)
    torch_frames = run()
    err = float(np.max(np.abs(torch_frames - jax_frames)))
    print(f"separate reference UNet, 3-step DDIM, torch vs JAX: max |delta| {err:.2e}, "
          f"rel {rel_err(torch_frames, jax_frames):.2e}")
    assert err <= 1e-4
    pipe.reference_unet = None  # the shared UNet in the reference pass instead: another video
    assert np.abs(run() - torch_frames).max() > 1e-2


def test_a_workdir_from_before_the_switch_loads_as_shared(tiny_ckpt, tmp_path):
    """A run's config.json written before `model.reference_net` existed: the model loads with the shared UNet."""
    import shutil  # noqa: PLC0415

    workdir = str(tmp_path / "old_run")
    shutil.copytree(tiny_ckpt[0], workdir)
    path = os.path.join(workdir, "config.json")
    config = json.load(open(path, encoding="utf-8"))
    del config["model"]["reference_net"]
    json.dump(config, open(path, "w", encoding="utf-8"))
    loaded = loading.load_trained(workdir)
    assert "reference_unet" not in loaded.params
    assert modeling.count_params(loaded.params) == modeling.count_params(tiny_ckpt[4])
