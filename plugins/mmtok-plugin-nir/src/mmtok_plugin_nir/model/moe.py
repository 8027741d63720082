"""Sparse mixture of expert FFNs with top-k token routing (Shazeer et al. 2017)."""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .losses import moe_loss

__all__ = ["MixtureOfExperts"]


class MixtureOfExperts(nn.Module):
    """n_experts FFNs (d -> 4d -> d, GELU); each token goes to its top_k experts, weighted by a
    softmax over its top_k gate logits.  x: (..., d) -> (out (..., d), aux).

    Dispatch gathers, per expert, only the tokens routed to it (index_select / index_add), so the
    cost is top_k FFN evaluations per token, not n_experts.

    aux:
      load_balance_loss  CV(expert_loads)^2 with expert_loads = the mean router probability
                         softmax(logits) of each expert over the tokens (the expected load; the
                         hard counts below have no gradient). 0 when perfectly balanced.
      expert_fraction    (n_experts,) fraction of the token -> expert assignments per expert
                         (hard counts / (tokens * top_k); sums to 1).
      expert_probs       (n_experts,) the expert_loads above.
      expert_index       (tokens, top_k) the chosen experts of every (flattened) token.
    """

    def __init__(self, d_model: int, n_experts: int = 4, top_k: int = 2, hidden_ratio: int = 4):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MixtureOfExperts: top_k={top_k} must be in 1..n_experts={n_experts}")
        self.n_experts, self.top_k = n_experts, top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList([
            nn.Sequential(nn.Linear(d_model, hidden_ratio * d_model), nn.GELU(),
                          nn.Linear(hidden_ratio * d_model, d_model))
            for _ in range(n_experts)])

    def forward(self, x: Float[Tensor, "... d"]) -> tuple[Float[Tensor, "... d"], dict[str, Tensor]]:
        flat = x.reshape(-1, x.shape[-1])                                   # (t, d)
        logits = self.gate(flat)                                            # (t, e)
        top_logits, top_index = logits.topk(self.top_k, dim=-1)             # (t, k)
        top_weight = top_logits.softmax(dim=-1)
        out = torch.zeros_like(flat)
        counts = []
        for e, expert in enumerate(self.experts):
            token, slot = (top_index == e).nonzero(as_tuple=True)
            counts.append(token.numel())
            if token.numel():
                y = expert(flat.index_select(0, token)) * top_weight[token, slot, None]
                out = out.index_add(0, token, y)
        probs = logits.softmax(dim=-1).mean(0)                              # (e,)
        fraction = torch.tensor(counts, dtype=probs.dtype, device=x.device) / (flat.shape[0] * self.top_k)
        aux = {"load_balance_loss": moe_loss(probs), "expert_fraction": fraction,
               "expert_probs": probs, "expert_index": top_index}
        return out.reshape(x.shape), aux
