"""GRM and its backbones; `from_pretrained` loads a Hugging Face checkpoint folder."""
from gralign_jax.models.backbones import from_pretrained  # noqa: F401
