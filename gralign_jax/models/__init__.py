"""GRM and its backbones; `from_pretrained` loads a Hugging Face checkpoint folder."""
from gralign_jax.weights import from_pretrained  # noqa: F401
