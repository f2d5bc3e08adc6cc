"""Weight loading from local diffusers / transformers folders and export back to torch state dicts."""

from humandiff.weights.clip import load_image_encoder
from humandiff.weights.diffusers import load_unet, load_vae

__all__ = ["load_image_encoder", "load_unet", "load_vae"]
