"""gralign_jax: GRM fine-grained image-text alignment in JAX/Flax."""
