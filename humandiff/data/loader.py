"""The training input pipeline (grain): source -> per-process shard -> shuffle -> examples -> batches
-> global jax arrays. One entry point, `make_train_iterator(data_config, mesh=..., seed=...)`.

Several built datasets mix in one run: `name="tiktok,ubc_fashion"` with `weights=(1, 3)` (proportions; () =
equal). Each dataset is sharded, seeded, shuffled, repeated and transformed on its own, then
`humandiff.data.mixture` draws from them in those proportions, in a seeded order (docs/data.md).

The returned iterator is a `grain.DatasetIterator`: `get_state()` / `set_state()` make it resumable, and
it saves with Orbax through `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`.

Batch: ref_image, tgt_image float32 [B,H,W,3] in [-1,1] (video: tgt_* [B,F,H,W,3]);
ref_pose, tgt_pose float32 in [0,1]; clip_image float32 [B,224,224,3] (CLIP-normalised); drop_cond bool
[B]; try-on adds tryon_mask float32 [B,H,W,1] (1 = region to generate).
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from humandiff.data import examples, mixture, sources, transforms

STAGES = ("image", "video", "tryon")
SOURCES = ("tfds", "synthetic")


def default_config() -> ml_collections.ConfigDict:
    """The data config with every field documented; configs override what they need."""
    c = ml_collections.ConfigDict()
    c.source = "synthetic"  # "tfds": a dataset built by data_pipelines.build; "synthetic": generated on the fly
    c.data_dir = ""  # tfds: OUT/<name>/<version> printed by the build, or OUT together with `name`
    c.name = ""  # tfds: dataset name under data_dir (tiktok | ubc_fashion | video_folder | viton_hd | synthetic),
    # or several separated by commas ("tiktok,ubc_fashion"): a mixture; data_dir is then the build output root
    c.weights = ()  # mixture: sampling weight per name in `name` (normalised to proportions); () = equal
    c.split = "train"  # tfds split ("train", "test", VITON-HD: "test_paired" / "test_unpaired")
    c.stage = "image"  # "image": ref+target frames; "video": clips + ref; "tryon": VITON-HD pairs
    c.resolution = (512, 512)  # (height, width) of reference/target images and poses, pixels
    c.num_frames = 16  # video stage: frames per clip
    c.stride = 4  # video stage: source frames between consecutive clip frames
    c.min_margin = 8  # image stage: |ref - tgt| >= min_margin frames
    c.drop_prob = 0.1  # probability of drop_cond=True (no reference, zero image embedding) for CFG
    c.batch_size = 4  # global batch (all processes); divided evenly among processes
    c.flip = True  # random horizontal flip (p=0.5), the same for frame, pose and reference
    c.crop_scale = (0.9, 1.0)  # random box side, as a fraction of the base box (see crop_mode)
    c.crop_mode = "fill"  # "fill": crop the frame to the output aspect; "fit": keep all of it, letterboxed
    c.reference_crop_scale = ()  # () = the reference is framed as its targets; (min, max): its own random box
    # (another camera distance and offset; the same flip), side as in crop_scale; image and video stages
    c.clip_size = 224  # CLIP image encoder input size, pixels
    c.score_threshold = 0.3  # keypoints with score <= this are not drawn
    c.skip_short = False  # videos too short for the sampling: skip them (True) or raise (False)
    c.shuffle = True  # shuffle the records (per epoch, seeded)
    c.num_threads = 4  # threads decoding/transforming examples in each process (or worker)
    c.prefetch = 8  # examples prefetched per process
    c.num_workers = 0  # >0: that many worker processes (grain mp_prefetch) per host
    c.batch_axes = ("data", "fsdp")  # mesh axes the batch dimension is split over (those present)
    c.synthetic = ml_collections.ConfigDict(dict(
        num_videos=64,  # synthetic source: number of videos
        num_frames=24,  # frames per synthetic video
        height=64,  # synthetic frame height, pixels
        width=64,  # synthetic frame width, pixels
        seed=0,  # offset of the synthetic videos' seeds
        travel=0.1,  # largest sideways wandering of a figure, fraction of the width
    ))
    return c


def resolution(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(height, width) from `config.resolution` (an int means square)."""
    r = config.resolution
    if isinstance(r, int):
        return r, r
    if len(r) != 2:
        raise ValueError(f"data.resolution={r!r}: expected an int or (height, width)")
    return int(r[0]), int(r[1])


def validate_config(config: ml_collections.ConfigDict, process_count: int = 1) -> None:
    """Checks the data config before anything runs; errors name the field and value."""
    if config.stage not in STAGES:
        raise ValueError(f"data.stage={config.stage!r}; expected one of {STAGES}")
    if config.source not in SOURCES:
        raise ValueError(f"data.source={config.source!r}; expected one of {SOURCES}")
    if config.source == "tfds" and not config.data_dir:
        raise ValueError("data.source='tfds' needs data.data_dir (the output of data_pipelines.build)")
    if config.source == "tfds":
        mix = sources.parse_mix(config.name, config.weights)
        if config.stage == "tryon" and len(mix) > 1:
            raise ValueError(f"data.name={config.name!r}: the try-on stage reads one VITON-HD dataset, not a "
                             "mixture")
    if config.stage == "tryon" and config.source != "tfds":
        raise ValueError("data.stage='tryon' needs a built VITON-HD dataset (data.source='tfds')")
    h, w = resolution(config)
    if h <= 0 or w <= 0:
        raise ValueError(f"data.resolution={config.resolution!r} must be positive")
    if config.batch_size <= 0 or config.batch_size % process_count:
        raise ValueError(f"data.batch_size={config.batch_size} must be a positive multiple of the "
                         f"process count {process_count}")
    if config.num_frames < 1 or config.stride < 1 or config.min_margin < 0:
        raise ValueError(f"data.num_frames={config.num_frames}, stride={config.stride} must be >= 1 and "
                         f"min_margin={config.min_margin} >= 0")
    if not 0.0 <= config.drop_prob <= 1.0:
        raise ValueError(f"data.drop_prob={config.drop_prob} must be in [0, 1]")
    if config.crop_mode not in transforms.CROP_MODES:
        raise ValueError(f"data.crop_mode={config.crop_mode!r}; expected one of {transforms.CROP_MODES}")
    lo, hi = config.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"data.crop_scale={tuple(config.crop_scale)} must satisfy 0 < min <= max <= 1")
    why = reference_crop_problem(config.reference_crop_scale, config.stage)
    if why:
        raise ValueError(f"data.reference_crop_scale={tuple(config.reference_crop_scale)}: {why}")


def reference_crop_problem(scale: tuple[float, ...], stage: str) -> str | None:
    """Why `reference_crop_scale` cannot mean what it says for `stage`, or None when it can."""
    scale = tuple(scale)
    if scale and (len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0):
        return "must be () or (min, max) with 0 < min <= max <= 1"
    if scale and stage == "tryon":
        return "the try-on stage shows the garment whole, uncropped; use () for the try-on stage"
    return None


def example_options(config: ml_collections.ConfigDict) -> examples.ExampleOptions:
    h, w = resolution(config)
    return examples.ExampleOptions(
        stage=config.stage, height=h, width=w, num_frames=config.num_frames, stride=config.stride,
        min_margin=config.min_margin, drop_prob=config.drop_prob, flip_prob=0.5 if config.flip else 0.0,
        crop_scale=tuple(config.crop_scale), crop_mode=config.crop_mode,
        reference_crop_scale=tuple(config.reference_crop_scale), clip_size=config.clip_size,
        score_threshold=config.score_threshold, skip_short=config.skip_short)


Mixture = mixture.Mixture  # several sources in fixed proportions (humandiff/data/mixture.py)


def open_source(config: ml_collections.ConfigDict) -> sources.RandomAccessSource | Mixture:
    """The random-access source the config names (a `Mixture` when `name` lists several datasets)."""
    if config.source == "tfds":
        mix = sources.parse_mix(config.name, config.weights)
        if len(mix) == 1:
            return sources.open_tfds(config.data_dir, config.split, mix[0][0])
        names = [n for n, _ in mix]
        dirs = sources.resolve_mix_dirs(config.data_dir, names)
        return Mixture([sources.open_tfds(d, config.split) for d in dirs], [w for _, w in mix], names)
    s = config.synthetic
    return sources.SyntheticVideos(s.num_videos, s.num_frames, s.height, s.width, s.seed, split=config.split,
                                   travel=s.travel)


def shard_options(process_index: int | None, process_count: int | None) -> grain.sharding.ShardOptions:
    """This process's shard: `ShardByJaxProcess` unless an index/count is given (tests, simulations)."""
    if process_index is None:
        return grain.sharding.ShardByJaxProcess(drop_remainder=False)
    if process_count is None or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} needs 0 <= index < process_count={process_count}")
    return grain.sharding.ShardOptions(process_index, process_count, drop_remainder=False)


def _examples(source: sources.RandomAccessSource, config: ml_collections.ConfigDict, seed: list[int],
              shard: grain.sharding.ShardOptions, num_epochs: int | None, what: str) -> grain.MapDataset:
    """One source's examples for this process: shard -> seed -> shuffle -> repeat -> per-example transform."""
    if len(source) < shard.shard_count:
        raise ValueError(f"{what}: {len(source)} records cannot be split over {shard.shard_count} processes")
    process_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    ds = grain.MapDataset.source(source)[shard.shard_index::shard.shard_count].seed(process_seed)
    if config.shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    options = example_options(config)
    op = examples.TryOnExampleOp(options) if config.stage == "tryon" else examples.VideoExampleOp(options)
    return ds.random_map(op)


def build_dataset(source: sources.RandomAccessSource | Mixture, config: ml_collections.ConfigDict, *, seed: int,
                  shard: grain.sharding.ShardOptions, num_epochs: int | None = None) -> grain.IterDataset:
    """The per-process pipeline over `source`, yielding numpy batches of batch_size / shard_count.

    Args:
        source: random-access records (`open_source`, or any list-like of records), or a `Mixture` of
            several: each is sharded, shuffled and transformed on its own (dataset i seeded with
            (seed, shard index, i + 1)), then `mixture.mix` draws from them in the mixture's proportions
            (exact per block of 1000 examples, seeded order; finite epochs end when one dataset runs out).
        config: the data config (`default_config` fields).
        seed: pipeline seed; each process folds in its shard index.
        shard: which part of the records this process reads.
        num_epochs: None repeats forever.
    """
    validate_config(config, shard.shard_count)
    if isinstance(source, Mixture):
        names = tuple(source.names) or tuple(f"source {i}" for i in range(len(source.sources)))
        parts = [_examples(s, config, [seed, shard.shard_index, i + 1], shard, num_epochs, f"dataset {names[i]}")
                 for i, s in enumerate(source.sources)]
        mix_seed = int(np.random.SeedSequence([seed, shard.shard_index, 0]).generate_state(1)[0])
        ds = mixture.mix(parts, [float(w) for w in source.weights], mix_seed)
    else:
        ds = _examples(source, config, [seed, shard.shard_index], shard, num_epochs, "source")
    read = grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch)
    it_ds = ds.to_iter_dataset(read).batch(config.batch_size // shard.shard_count, drop_remainder=True)
    if config.num_workers > 0:
        _absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    return it_ds


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app (scripts, notebooks) their defaults
    have to be marked parsed first, or the first worker fails with UnparsedFlagAccessError."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def batch_sharding(mesh: jax.sharding.Mesh, batch_axes) -> jax.sharding.NamedSharding:
    """Sharding that splits dim 0 over the mesh's batch axes (those present) and replicates the rest."""
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    spec = jax.sharding.PartitionSpec(axes if axes else None)
    return jax.sharding.NamedSharding(mesh, spec)


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax arrays (global batch = local batch x process count)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def make_train_iterator(data_config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None,
                        seed: int, process_index: int | None = None, process_count: int | None = None,
                        source: sources.RandomAccessSource | None = None,
                        sharding: jax.sharding.NamedSharding | None = None) -> grain.DatasetIterator:
    """The training iterator: an endless, checkpointable stream of batches.

    Args:
        data_config: `default_config()` fields.
        mesh: when given, batches are global `jax.Array`s split over `data_config.batch_axes`; without a
            mesh, process-local numpy batches.
        seed: pipeline seed (shuffle order, sampling, crops, flips, condition dropout).
        process_index: this process's index; default `jax.process_index()` (via ShardByJaxProcess).
        process_count: number of processes; default `jax.process_count()`.
        source: overrides the source the config names (tests, benchmarks); a `Mixture` mixes several.
        sharding: overrides the batch sharding derived from `mesh` (dim 0 must be the batch).

    Returns:
        A grain `DatasetIterator` (`next(it)` -> dict of arrays; `get_state`/`set_state`).
    """
    shard = shard_options(process_index, process_count)
    validate_config(data_config, shard.shard_count)
    ds = build_dataset(source if source is not None else open_source(data_config), data_config, seed=seed,
                       shard=shard)
    if sharding is None and mesh is not None:
        sharding = batch_sharding(mesh, data_config.batch_axes)
        n = int(np.prod([mesh.shape[a] for a in data_config.batch_axes if a in mesh.axis_names]))
        if data_config.batch_size % n:
            raise ValueError(f"data.batch_size={data_config.batch_size} is not divisible by the {n} devices "
                             f"of mesh axes {tuple(data_config.batch_axes)}")
    if sharding is not None:
        ds = ds.map(lambda b: to_global(b, sharding))
    return iter(ds)


def describe(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A short summary for logs: source, split, sizes and the builder's skip counts."""
    info = {"source": config.source, "stage": config.stage, "resolution": resolution(config),
            "batch_size": config.batch_size}
    if config.source == "tfds":
        mix = sources.parse_mix(config.name, config.weights)
        if len(mix) == 1:
            path = sources.resolve_dataset_dir(config.data_dir, mix[0][0])
            info.update(dataset_dir=path, num_skipped=sources.dataset_metadata(path).get("num_skipped", {}))
        else:
            paths = sources.resolve_mix_dirs(config.data_dir, [n for n, _ in mix])
            info.update(mixture={n: round(w, 4) for n, w in mix}, dataset_dir=paths,
                        num_skipped={n: sources.dataset_metadata(p).get("num_skipped", {})
                                     for (n, _), p in zip(mix, paths)})
    return info
