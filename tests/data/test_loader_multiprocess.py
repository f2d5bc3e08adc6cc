"""Two real JAX processes (jax.distributed on CPU): ShardByJaxProcess gives each its own videos, and the
batch is one global array of the global batch size with each process's rows on its own devices."""

import json
import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from humandiff.data import loader

    H = W = 8
    source = []
    for v in range(8):
        frames = np.zeros((4, H, W, 3), np.uint8)
        frames[..., 0] = 20 + 10 * v
        kp = np.zeros((4, 133, 3), np.float32)
        source.append({"video_id": f"v{v}", "frames": frames, "keypoints": kp, "fps": 8.0})
    c = loader.default_config()
    c.update(resolution=(H, W), batch_size=8, min_margin=1, num_threads=1, prefetch=1, shuffle=False)
    mesh = jax.make_mesh((8,), ("data",))
    batch = next(loader.make_train_iterator(c, mesh=mesh, seed=0, source=source))  # ShardByJaxProcess
    x = batch["ref_image"]
    local = np.concatenate([np.asarray(s.data) for s in sorted(x.addressable_shards, key=lambda s: s.index[0].start)])
    videos = sorted({int(round(((r[..., 0].mean() + 1) * 127.5 - 20) / 10)) for r in local})
    print(json.dumps({"process": jax.process_index(), "global_shape": list(x.shape),
                      "local_rows": int(local.shape[0]), "videos": videos}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_jax_processes_get_disjoint_shards_in_one_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), address, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)  # two fresh JAX processes: ~3 s
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for o in outs:
        assert o["global_shape"] == [8, 8, 8, 3] and o["local_rows"] == 4
    # Unshuffled, each process's first local batch is its whole shard: even videos, then odd videos.
    assert outs[0]["videos"] == [0, 2, 4, 6] and outs[1]["videos"] == [1, 3, 5, 7]
