"""Config loading, arg parsing and start-up validation: every bad value is rejected with its key and value."""

import shutil

import pytest

from humandiff import config_lib
from humandiff.config_lib import ConfigError

CONFIGS = ["configs/demo.py", "configs/tiny_test.py", "configs/sd15_image.py:data_dir={built}",
           "configs/sd15_video.py:data_dir={built}", "configs/sd15_tryon.py:data_dir={built}",
           "configs/sd15_image.py:runlocal", "configs/sd15_video.py:runlocal",
           "configs/sd15_tryon.py:runlocal,data_dir={built}",
           "configs/demo.py:interaction=full,use_ref_pose=false,form=joint"]


def built_root(tmp_path, names=("tiktok", "ubc_fashion", "viton_hd")) -> str:
    """A build output root in which each named dataset looks built (OUT/<name>/1.0.0/dataset_info.json)."""
    for name in names:
        (tmp_path / name / "1.0.0").mkdir(parents=True)
        (tmp_path / name / "1.0.0" / "dataset_info.json").write_text("{}")
    return str(tmp_path)


@pytest.mark.parametrize("spec", CONFIGS)
def test_shipped_configs_validate(spec, tmp_path):
    config = config_lib.load(spec.format(built=built_root(tmp_path)))
    config_lib.validate(config, num_devices=8 if "tiny" in spec else (4 if "runlocal" in spec else None))


@pytest.mark.parametrize("name", ["sd15_image", "sd15_video", "sd15_tryon"])
def test_production_configs_do_not_read_the_demo(name, tmp_path):
    """They start from configs/common.py: with demo.py gone they load the same config."""
    for f in ("common.py", "sd15_image.py", f"{name}.py"):
        shutil.copy(f"configs/{f}", tmp_path / f)
    assert config_lib.load(str(tmp_path / f"{name}.py")).to_dict() == config_lib.load(f"configs/{name}.py").to_dict()


def test_parse_arg_types_and_flags():
    arg = config_lib.parse_arg("runlocal,n=3,lr=0.5,name=x,use=false,dims=1|2", runlocal=False, n=1, lr=1.0,
                               name="", use=True, dims=(0,))
    assert (arg.runlocal, arg.n, arg.lr, arg.name, arg.use, arg.dims) == (True, 3, 0.5, "x", False, (1, 2))
    with pytest.raises(ConfigError, match="'bogus' is unknown"):
        config_lib.parse_arg("bogus=1", runlocal=False)
    with pytest.raises(ConfigError, match="n='x'"):
        config_lib.parse_arg("n=x", n=1)


def test_ablation_args_reach_fields():
    c = config_lib.load("configs/demo.py:interaction=full,use_ref_pose=false,form=joint")
    assert (c.model.interaction, c.model.use_ref_pose, c.train.form) == ("full", False, "joint")


def test_overrides_and_unknown_override():
    c = config_lib.load("configs/tiny_test.py", {"optim.lr": 3e-4})
    assert c.optim.lr == 3e-4
    with pytest.raises(ConfigError, match="optim.lrr"):
        config_lib.load("configs/tiny_test.py", {"optim.lrr": 1.0})


BAD = [
    ("model.interaction", "bidirectional", "model.interaction='bidirectional'"),
    ("model.reference_net", "twin", "model.reference_net='twin'"),
    ("diffusion.prediction_type", "x0", "diffusion.prediction_type='x0'"),
    ("sample.sampler", "plms", "sample.sampler='plms'"),
    ("optim.schedule", "linear", "optim.schedule='linear'"),
    ("data.synthetic.travel", 0.7, "data.synthetic.travel=0.7"),
    ("model.pose_encoder", {"block_out_channels": (16,), "coord_channels": "yes"},
     "model.pose_encoder.coord_channels='yes'"),
    ("model.attention_query_chunk", -1, "model.attention_query_chunk=-1"),
    ("mesh.cpu_devices", -2, "mesh.cpu_devices=-2"),
    ("optim.lr", -1e-4, "optim.lr=-0.0001"),
    ("train.form", "three_pass", "train.form='three_pass'"),
    ("train.nan_policy", "ignore", "train.nan_policy='ignore'"),
    ("train.compute_dtype", "float16", "train.compute_dtype='float16'"),
    ("train.compilation_cache_dir", None, "train.compilation_cache_dir=None"),
    ("data.drop_prob", 1.5, "data.drop_prob=1.5"),
    ("diffusion.ref_timestep", 1000, "diffusion.ref_timestep=1000"),
    ("optim.frozen", ("vae/[",), "optim.frozen='vae/\\['"),
    ("model.vae_dir", "/nonexistent/vae", "model.vae_dir='/nonexistent/vae'"),
    ("batch_size", 6, "batch_size=6"),
    ("mesh.shape", (3, 1, 1), r"mesh.shape=\(3, 1, 1\)"),
    ("mesh.shape", (-1, -1, 1), r"mesh.shape=\(-1, -1, 1\)"),
    ("sharding.rules", ((r"kernel$", "diagonal"),), "sharding.rules\\[0\\]='diagonal'"),
    ("sharding.mode", "auto", "sharding.mode='auto'"),
    ("sharding.logical_rules", (("embed", "fsdp"), ("embedding", "fsdp")),
     "sharding.logical_rules\\[1\\]='embedding'"),
    ("sharding.logical_rules", (("heads", "model"),), "sharding.logical_rules\\[0\\]='model'"),
    ("sharding.logical_rules", (("heads",),), "sharding.logical_rules\\[0\\]=\\('heads',\\)"),
    ("sharding.logical_rules", (("norm", None), ("norm", "fsdp")), "mapped both to None and to a mesh axis"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD])
def test_bad_values_are_named(key, value, message):
    config = config_lib.load("configs/tiny_test.py")
    config_lib.set_dotted(config, key, value)
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config, num_devices=8)


def test_wsd_needs_decay_steps():
    config = config_lib.load("configs/tiny_test.py", {"optim.schedule": "wsd", "optim.decay_steps": 0})
    with pytest.raises(ConfigError, match="optim.decay_steps=0: must be > 0"):
        config_lib.validate(config)
    config.optim.decay_steps = 6
    config_lib.validate(config)


def test_tfds_source_needs_data_dir():
    with pytest.raises(ConfigError, match="data.data_dir=''"):
        config_lib.validate(config_lib.load("configs/sd15_image.py"))


def test_joint_form_rejects_video():
    config = config_lib.load("configs/sd15_video.py:runlocal")
    config.train.form = "joint"
    with pytest.raises(ConfigError, match="train.form='joint'"):
        config_lib.validate(config)


def test_mesh_shape_fill():
    config = config_lib.load("configs/tiny_test.py")
    config.mesh.shape = (2, -1, 1)
    assert config_lib.mesh_shape(config, 8) == (2, 4, 1)
