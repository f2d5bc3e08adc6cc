"""CPU process set-up done by the trainer before JAX starts: XLA:CPU's memory-minimising scheduler
(`runtime.use_memory_scheduler_on_cpu`) and the CPU device count (`runtime.use_cpu_devices`), each unless the user's
XLA_FLAGS already chooses. Each case runs in its own process: XLA reads XLA_FLAGS once per process."""

import os
import subprocess
import sys

from humandiff.training import runtime

# Eight 3x3 convolutions and their gradient: the concurrency-ordered schedule starts the backward pass's
# weight-only work early, so its temporaries are larger.
_SCRIPT = """
import os
from humandiff.training import runtime
runtime.use_memory_scheduler_on_cpu()
import jax, jax.numpy as jnp

def loss(ws, x):
    for w in ws:
        x = jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.sum(x ** 2)

ws = [jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)] * 8
x = jax.ShapeDtypeStruct((1, 8, 8, 64), jnp.float32)
compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
print(os.environ["XLA_FLAGS"])
print(compiled.memory_analysis().temp_size_in_bytes)
"""


def _run(xla_flags: str) -> tuple[str, int]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, temp = out.stdout.strip().splitlines()[-2:]
    return flags, int(temp)


def test_memory_scheduler_is_added_and_shrinks_temporaries():
    flags, temp_memory = _run("--xla_force_host_platform_device_count=2")
    assert flags == f"--xla_force_host_platform_device_count=2 {runtime.CPU_SCHEDULER_FLAG}"
    flags, temp_default = _run("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT")  # the user's choice stands:
    assert flags == "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"
    assert temp_memory < temp_default, (temp_memory, temp_default)  # measured 163840 vs 360448 bytes
    chosen = "--xla_cpu_enable_concurrency_optimized_scheduler=true"  # the deprecated spelling is a choice too
    flags, temp_concurrent = _run(chosen)
    assert flags == chosen
    assert temp_memory < temp_concurrent, (temp_memory, temp_concurrent)  # honoured: not ours added on top


_DEVICES = """
from humandiff import config_lib
from humandiff.training import runtime
config = config_lib.load("configs/demo.py")
runtime.use_cpu_devices(config_lib.cpu_devices(config))
import jax
print(config.mesh.cpu_devices, jax.device_count())
"""


def _devices(xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", **({"XLA_FLAGS": xla_flags} if xla_flags is not None else {}))
    out = subprocess.run([sys.executable, "-c", _DEVICES], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_cpu_devices_from_the_config_unless_xla_flags_sets_them():
    assert _devices(None) == "2 2"  # the demo splits the CPU into 2 devices
    assert _devices("--xla_force_host_platform_device_count=3") == "2 3"  # the user's XLA_FLAGS stand
