"""humandiff: Spatially Conditioned Diffusion (SCD) for pose-guided human image and video generation in JAX."""

import setuptools

# Core: what training, sampling and the data pipeline need on any backend.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tensorflow-datasets>=4.9.10,<5",
    "array-record>=0.8.6,<0.9",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1",
    "numpy>=2.0,<3",
    "scipy>=1.11,<2",
    "safetensors>=0.8,<1",
    "av>=15,<19",
    "Pillow>=10,<14",
    "opencv-python-headless>=4.10,<6",
    "tensorboardX>=2.6.5,<3",
    "tqdm>=4.66,<5",
]

# Interop layer (weight files, export) and numerical oracle in tests. Never imported by the core.
# Install torch==2.13.0 (CPU) first on machines without CUDA, or the resolver pulls a CUDA build.
TORCH = [
    "torch>=2.4",
    "diffusers>=0.40,<0.43",
    "transformers>=5.0,<6",
]
POSE = ["onnxruntime>=1.20,<2"]
APP = ["gradio>=6,<7"]  # the web demo, python -m humandiff.app
TEST = TORCH + POSE + APP + [
    "selenium>=4.20,<5",  # drives a headless Chromium through the web demo (.ci/run installs the browser)
    "pytest>=8,<10",
    "pytest-xdist>=3.5,<4",
    "scikit-image>=0.24,<0.27",
    "onnx>=1.17,<2",
    "nbclient>=0.10,<0.12",
    "nbformat>=5.10,<6",
    "ipykernel>=6.29,<8",
]

setuptools.setup(
    name="humandiff",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["humandiff", "humandiff.*", "data_pipelines", "data_pipelines.*"]),
    package_data={"humandiff.metrics": ["splits/*.txt"]},  # shipped TikTok / UBC-Fashion test-split id lists
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "torch": TORCH,
        "pose": POSE,
        "app": APP,
        "test": TEST,
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda13]>=0.10.2,<0.11"],
    },
    license="Apache-2.0",
)
