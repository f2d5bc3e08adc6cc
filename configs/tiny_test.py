"""Smallest config, for tests: 16x16 pixel-space SCD on synthetic data, a few steps.

Args (after the colon) are those of configs/demo.py.
"""

from humandiff import config_lib


def get_config(arg=None):
    """The demo config, shrunk with config_lib.shrink_for_local and tuned for 8 fake CPU devices."""
    demo = config_lib.load_sibling(__file__, "demo")
    c = config_lib.shrink_for_local(demo.get_config(arg))
    c.batch_size = 8  # one pair per fake device under the 8-device test mesh
    c.total_steps = 8  # optimizer steps
    c.log_every = 2  # steps between metric writes
    c.ckpt.every = 4  # steps between checkpoints
    c.ckpt.async_save = False  # tests read checkpoints right after writing them
    c.optim.warmup_steps = 2  # linear warmup steps
    c.optim.schedule = "constant"  # then the peak, held
    c.optim.ema_decay = 0.9  # fast EMA so tests can see it move
    c.data.num_threads = 0  # read in the main thread (deterministic, no thread start-up)
    c.data.prefetch = 0  # no prefetch buffer
    c.evals.heldout.num_videos = 1  # sampled identities
    return c
