"""Test set-up: 8 fake CPU devices, so that sharded code paths run on any machine.

XLA reads the flag when JAX initialises its backend, so it is set before anything
imports jax. Tests that need one device build a mesh of `jax.devices()[:1]`.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Caches the code keeps between runs (the TFDS caption index) go to a fresh folder.
os.environ["GRALIGN_CACHE"] = tempfile.mkdtemp(prefix="gralign_cache_")
