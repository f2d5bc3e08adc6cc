"""Weight loading from local diffusers / transformers folders and export back to torch state dicts."""

from humandiff.weights.diffusers import load_unet, load_vae

__all__ = ["load_unet", "load_vae"]
