"""Fast parameter initialisation for tests, demos and debugging.

`module.init` under `jax.jit` compiles every random initialiser into one XLA program; for a UNet that takes tens
of seconds on a CPU (threefry per leaf). `numpy_init` derives the shapes with `jax.eval_shape` (no compile, no
allocation) and fills them from NumPy: kernels lecun-normal (std 1/sqrt(fan_in)), biases 0, norm scales 1. It
does not reproduce custom initialisers (e.g. the pose encoder's zero output conv): use `module.init` there
(for small modules, an `jax.random.key(0, impl="rbg")` key compiles several times faster than the default).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def numpy_init(module: Any, *args: Any, seed: int = 0, method: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Random float32 params for `module` called with `args` (arrays or `jax.ShapeDtypeStruct`s).

    Args:
      module: a Linen module.
      *args: example inputs (only shapes/dtypes are used).
      seed: NumPy seed.
      method: optional module method used for init.
      **kwargs: keyword arguments for the call.

    Returns:
      The `params` tree.
    """
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, method=method, **kwargs), *args)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in))
        if name == "scale":
            return jnp.ones(leaf.shape, jnp.float32)
        return jnp.zeros(leaf.shape, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])
