"""Pre-norm transformer encoder (global reasoning after the Mamba backbone) with LoRA on q/k/v."""

import math

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["LoRALinear", "TransformerEncoder", "TransformerLayer"]


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a low-rank update (Hu et al. 2021).  x: (..., in) -> (..., out).

    y = base(x) + (alpha / rank) * x A^T B^T with A (rank, in) Kaiming-uniform and B (out, rank)
    zero, so the wrapped layer starts out exactly equal to base. The card uses rank 4-8, alpha 16.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRALinear: rank must be >= 1, not {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(base.weight.new_empty(rank, base.in_features))
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Float[Tensor, "... i"]) -> Float[Tensor, "... o"]:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def merge(self) -> nn.Linear:
        """A plain nn.Linear with the update folded into its weight (same outputs)."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        merged.weight.data.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        if self.base.bias is not None:
            merged.bias.data.copy_(self.base.bias)
        return merged


class TransformerLayer(nn.Module):
    """x + o(attn(q, k, v of norm1(x))); x + mlp(norm2(x)).  x: (b, n, d) -> (b, n, d).

    Separate q, k, v, o Linear layers (so LoRA can wrap q / k / v one by one);
    F.scaled_dot_product_attention, no mask (every token sees every token).
    """

    def __init__(self, d_model: int, n_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"TransformerLayer: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def attention(self, x: Float[Tensor, "b n d"]) -> Float[Tensor, "b n d"]:
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: Float[Tensor, "b n d"]) -> Float[Tensor, "b n d"]:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """n_layers TransformerLayer + a final LayerNorm.  x: (b, n, d) -> (b, n, d)."""

    def __init__(self, d_model: int, n_layers: int = 2, n_heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(d_model, n_heads, mlp_ratio, dropout)
                                     for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Float[Tensor, "b n d"]) -> Float[Tensor, "b n d"]:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def add_lora(self, rank: int = 8, alpha: float = 16.0) -> list[nn.Parameter]:
        """Freeze the encoder and wrap q, k, v of every layer in a LoRALinear (o and the MLP
        stay plain, frozen). Returns the new trainable parameters (`lora_parameters`)."""
        if self.lora_parameters():
            raise RuntimeError("TransformerEncoder.add_lora: LoRA adapters are already in place")
        self.requires_grad_(False)
        for layer in self.layers:
            layer.q, layer.k, layer.v = (LoRALinear(proj, rank, alpha) for proj in (layer.q, layer.k, layer.v))
        return self.lora_parameters()

    def lora_parameters(self) -> list[nn.Parameter]:
        """The A and B matrices of every LoRALinear, in layer order."""
        return [p for m in self.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]
