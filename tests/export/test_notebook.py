"""notebooks/sample.ipynb runs top to bottom (nbclient, local kernel) against the tiny training checkpoint:
export on the fly, JAX sampling, inline display, download links, and the PyTorch run. Budget: <= 180 s."""

import os
import time

import pytest

from .conftest import ROOT, require_parts

require_parts()
import humandiff.sample  # noqa: F401  (fails loudly if broken)
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = os.path.join(ROOT, "notebooks", "sample.ipynb")


@pytest.mark.slow  # ~45-60 s on a busy 2-core CPU (kernel start, one JAX sampler compile, torch import)
def test_notebook_runs_top_to_bottom(tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "nb_out"
    env = {"HUMANDIFF_CHECKPOINT": tiny_ckpt[0], "HUMANDIFF_OUT": str(out), "HUMANDIFF_STEPS": "3",
           "HUMANDIFF_FRAMES": "2", "HUMANDIFF_GUIDANCE": "2.0", "PYTHONPATH": ROOT,
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_COMPILATION_CACHE_DIR": os.path.abspath(os.path.join(ROOT, ".jax_cache"))}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    # A per-cell limit that only stops a hang; speed is not asserted here (a loaded machine is slower).
    nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - t0
    print(f"notebook executed in {seconds:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    for name in ("result.mp4", "result.gif", "grid.mp4", "metadata.json", "result_torch.mp4"):
        assert (out / "result" / name).is_file(), name
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    html = "".join(str(o.get("data", {}).get("text/html", "")) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "<video" in html and "Download result.mp4" in html
