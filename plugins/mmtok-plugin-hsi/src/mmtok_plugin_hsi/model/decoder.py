"""MAE decoder of the guided SpectralGPT: the kept latent tokens plus a learned mask token at
every hidden position, back in grid order, through a few ViT blocks to a prediction of every
3D patch.

Shapes: b batch, m kept tokens, n patches, d encoder width, e decoder width, pd patch values
(spectral_patch * spatial_patch**2).
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmtok_plugin_hsi.model.layers import SpatialSpectralPositionalEncoding, SpectralAttentionBlock, init_weights

__all__ = ["MAEDecoder"]


class MAEDecoder(nn.Module):
    """latent (b, m, d) + ids_restore (b, n) -> predicted patches (b, n, pd), all n of them
    (the loss picks the masked ones).

    Linear d -> e; append n - m mask tokens and unshuffle with ``ids_restore``; add the fixed
    `SpatialSpectralPositionalEncoding`; ``depth`` plain ViT blocks; LayerNorm; Linear e -> pd.
    """

    def __init__(self, grid: tuple[int, int, int], dim: int, patch_dim: int, decoder_dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.position = SpatialSpectralPositionalEncoding(grid, decoder_dim)
        self.blocks = nn.ModuleList(SpectralAttentionBlock(decoder_dim, heads, mlp_ratio, spectral_attention=False)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Float[Tensor, "b m d"], ids_restore: Int[Tensor, "b n"]) -> Float[Tensor, "b n pd"]:
        x = self.embed(latent)
        b, m, e = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, n - m, e)], 1)
        x = self.position(x.gather(1, ids_restore[..., None].expand(-1, -1, e)))
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))
