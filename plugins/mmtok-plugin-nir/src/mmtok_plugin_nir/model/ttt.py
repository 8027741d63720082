"""Test-time training: zero-shot adaptation to a new instrument from unlabeled spectra.

K steps of masked spectral reconstruction (MSRP, contiguous block masks) that update only the
LayerNorm / RMSNorm affine parameters (the card: safest, prevents catastrophic forgetting).
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from .embedding import block_mask
from .losses import msrp_loss

__all__ = ["block_mask", "test_time_train"]


def test_time_train(model: nn.Module, x: Float[Tensor, "b l"], wavelength_nm: Float[Tensor, "*b l"],
                    domain: Int[Tensor, " b"], steps: int = 10, lr: float = 1e-3, mask_ratio: float = 0.3,
                    min_block: int = 3, max_block: int = 5,
                    generator: torch.Generator | None = None) -> list[float]:
    """Adapt `model` (a SpectralFM) in place to the target spectra x (b, l); returns the MSRP
    loss of each of the `steps` Adam steps.

    Each step draws fresh block masks (`block_mask`: blocks of min_block..max_block adjacent
    patches until mask_ratio of the patches are hidden). Only `model.norm_parameters()` get
    gradients; every parameter's requires_grad flag and the train / eval mode are restored
    afterwards. Runs in eval mode (VIB means, no dropout).
    """
    norm_params = model.norm_parameters()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.requires_grad_(False)
    for p in norm_params:
        p.requires_grad_(True)
    model.eval()
    n_patches = model.embed.n_patches(x.shape[-1])
    optimizer = torch.optim.Adam(norm_params, lr=lr)
    curve = []
    try:
        for _ in range(steps):
            mask = block_mask(x.shape[0], n_patches, mask_ratio, generator, min_block, max_block, x.device)
            loss = msrp_loss(model(x, wavelength_nm, domain, mask).patch_recon, x, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
    finally:
        for p in norm_params:
            p.grad = None
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    return curve


test_time_train.__test__ = False  # not a pytest test, whatever imports it
