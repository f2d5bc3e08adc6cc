"""Evaluation metrics (DisCo protocol and a standard one): L1, PSNR / PSNR*, SSIM, LPIPS, FID, FID-VID, FVD.

Modules: `image` (per-image metrics, numpy or JAX), `frechet`, `lpips` / `inception` / `i3d` / `r3d` (Flax feature
networks), `weights` + `convert` (published weights -> safetensors), `suite` (the `humandiff.evaluate` run),
`evaluator` (jitted cheap metrics for training).
"""
