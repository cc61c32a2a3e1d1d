"""The GRM score, from its definition to the sharded (images x captions) matrix.

  similarity.py      the definition: S_ori, S_key, S_unc of encoded pairs (method.md
                     section 4), what training differentiates
  block_scores.py    the same scores for whole galleries: encodings -> one row/column
                     layout, and the block score functions over it (XLA, Pallas, global,
                     the definition itself)
  pallas_kernels.py  the fused Pallas kernels (Triton for GPUs, Mosaic for TPUs)
  blockwise.py       any block score function -> the sharded score matrix or streaming
                     top-k, images split over the mesh, texts streamed
  scorer.py          Scorer, the one way in: backend and blocks chosen for the hardware
"""
