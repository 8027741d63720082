"""Reusable network layers of mmtok's shared transformer, part of the public API for plugins'
own models (the CT encoder builds on them).

* `Attention`: multi-head self- / cross-attention through ``F.scaled_dot_product_attention``.
* `Mlp`: the transformer feed-forward block.
* `EncoderBlock` / `DecoderBlock`: pre-norm transformer blocks (the decoder cross-attends).
* `grid_sincos(grid, d)`: (prod(grid), d) sine-cosine positions of a token grid.
"""

from mmtok.model.layers import Attention, DecoderBlock, EncoderBlock, Mlp, grid_sincos

__all__ = ["Attention", "DecoderBlock", "EncoderBlock", "Mlp", "grid_sincos"]
