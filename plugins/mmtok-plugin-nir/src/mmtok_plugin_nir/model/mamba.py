"""Selective state-space backbone (Mamba, Gu & Dao 2023) in pure PyTorch.

The recurrence of the selective SSM, per channel c and state n:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,     y_t = C_t . h_t + D * u_t

`selective_scan` evaluates it with a parallel (odd-even / Blelloch-style) scan: O(l) work,
O(log l) sequential depth, any length (no padding to a power of two). Because A < 0 and
delta > 0, every factor exp(delta * A) and every product of them lies in (0, 1]: the scan only
multiplies and adds bounded numbers (no division, no exp of a cumulative sum), so it stays exact
for long sequences (tested against the plain loop `selective_scan_sequential` at l = 2048).
Its backward recomputes the states and runs the adjoint recurrence as the same scan backwards,
so training keeps only O(b l d) per block instead of the O(b l d d_state) states.

`MambaBlock` names its parameters like `mambapy.mamba.MambaBlock` (in_proj, conv1d, x_proj,
dt_proj, A_log, D, out_proj) and initialises them the same way, so a state_dict copies across;
`MambaBackbone` names its layers like `mambapy.mamba.Mamba` (layers.{i}.mixer / layers.{i}.norm)
and adds a final RMSNorm (norm_f).
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["MambaBackbone", "MambaBlock", "ResidualBlock", "parallel_scan", "selective_scan",
           "selective_scan_sequential"]


def parallel_scan(a: Float[Tensor, "b l ..."], x: Float[Tensor, "b l ..."]) -> Float[Tensor, "b l ..."]:
    """h_t = a_t * h_{t-1} + x_t along dim 1 (h_{-1} = 0), by recursive odd-even reduction.

    Neighbouring pairs (2i, 2i+1) are combined into one step (a_{2i+1} a_{2i},
    a_{2i+1} x_{2i} + x_{2i+1}); the half-length problem gives h at the odd positions, one
    multiply-add more gives the even ones. An odd length gets one identity step (a = 1, x = 0)
    appended at that level. Out of place (unbind / stack, no strided slicing), so autograd
    differentiates it directly and cheaply.
    """
    length = a.shape[1]
    if length == 1:
        return x
    if length % 2:
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
    a_even, a_odd = a.unflatten(1, (-1, 2)).unbind(2)
    x_even, x_odd = x.unflatten(1, (-1, 2)).unbind(2)
    h_odd = parallel_scan(a_odd * a_even, a_odd * x_even + x_odd)          # h_1, h_3, ...
    h_before = torch.cat([torch.zeros_like(h_odd[:, :1]), h_odd[:, :-1]], dim=1)
    h_even = a_even * h_before + x_even                                     # h_0, h_2, ...
    h = torch.stack([h_even, h_odd], dim=2).flatten(1, 2)
    return h if h.shape[1] == length else h[:, :length]


def _discretize(u, delta, A, B):
    """deltaA = exp(delta A): (b, l, d, n); deltaB u = delta B u: (b, l, d, n)."""
    delta_a = torch.exp(delta.unsqueeze(-1) * A)
    delta_bu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    return delta_a, delta_bu


class _SelectiveScan(torch.autograd.Function):
    """`selective_scan` with a hand-written backward that recomputes the states.

    Saves only the (b, l, d) / (b, l, n) inputs, not the (b, l, d, n) states of every scan level
    (what autograd through `parallel_scan` keeps: ~16x the memory with d_state = 16). Backward:
    with g_t = dL/dh_t (total), the adjoint recurrence g_t = C_t gy_t + a_{t+1} g_{t+1} is the
    same scan run from the end; then dL/d(delta_bu)_t = g_t and dL/d(log a)_t = g_t h_{t-1} a_t.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        ctx.save_for_backward(u, delta, A, B, C, D)
        h = parallel_scan(*_discretize(u, delta, A, B))
        return torch.einsum("bldn,bln->bld", h, C) + D * u

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, delta, A, B, C, D = ctx.saved_tensors
        delta_a, delta_bu = _discretize(u, delta, A, B)
        h = parallel_scan(delta_a, delta_bu)                                  # recomputed states
        del delta_bu
        dC = torch.einsum("bld,bldn->bln", gy, h)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        del h
        a_next = torch.cat([delta_a[:, 1:], torch.zeros_like(delta_a[:, :1])], dim=1)
        dh = gy.unsqueeze(-1) * C.unsqueeze(2)
        g = parallel_scan(a_next.flip(1), dh.flip(1)).flip(1)                # dL/d(delta_bu)
        del a_next, dh
        g_dA = g * h_prev * delta_a                                           # dL/d(delta A)
        du_delta = torch.einsum("bldn,bln->bld", g, B)                        # dL/d(delta u)
        dB = torch.einsum("bldn,bld->bln", g, delta * u)
        dA = torch.einsum("bldn,bld->dn", g_dA, delta)
        ddelta = torch.einsum("bldn,dn->bld", g_dA, A) + du_delta * u
        du = du_delta * delta + gy * D
        dD = (gy * u).sum((0, 1))
        return du, ddelta, dA, dB, dC, dD


def selective_scan(u: Float[Tensor, "b l d"], delta: Float[Tensor, "b l d"], A: Float[Tensor, "d n"],
                   B: Float[Tensor, "b l n"], C: Float[Tensor, "b l n"], D: Float[Tensor, " d"],
                   recompute: bool = True) -> Float[Tensor, "b l d"]:
    """Selective scan with a parallel scan over l. delta > 0 (after softplus), A < 0.

    recompute=True (default): the memory-lean `_SelectiveScan` (states recomputed in backward);
    False: plain autograd through `parallel_scan` (same values and gradients, more memory).
    """
    if recompute:
        return _SelectiveScan.apply(u, delta, A, B, C, D)
    h = parallel_scan(*_discretize(u, delta, A, B))                       # (b, l, d, n)
    return torch.einsum("bldn,bln->bld", h, C) + D * u


def selective_scan_sequential(u: Float[Tensor, "b l d"], delta: Float[Tensor, "b l d"],
                              A: Float[Tensor, "d n"], B: Float[Tensor, "b l n"],
                              C: Float[Tensor, "b l n"], D: Float[Tensor, " d"]) -> Float[Tensor, "b l d"]:
    """The same scan as a plain loop over l (the reference for `selective_scan`)."""
    delta_a, delta_bu = _discretize(u, delta, A, B)
    h = torch.zeros_like(delta_bu[:, 0])
    ys = []
    for t in range(u.shape[1]):
        h = delta_a[:, t] * h + delta_bu[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    return torch.stack(ys, dim=1) + D * u


class MambaBlock(nn.Module):
    """in_proj -> depthwise causal conv1d -> SiLU -> x_proj (dt, B, C) -> dt_proj -> softplus ->
    selective scan -> * SiLU(z) -> out_proj.  x: (b, l, d_model) -> (b, l, d_model).

    d_inner = expand * d_model; dt_rank = ceil(d_model / 16) when "auto" (as mambapy).
    parallel / recompute pick the scan: parallel with recomputing backward (default, least
    memory), parallel with plain autograd (recompute=False: ~25 % faster on CPU, ~2x the
    training memory of the model), or the sequential loop (parallel=False, slow, the reference).
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, parallel: bool = True, recompute: bool = True):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.parallel, self.recompute = parallel, recompute   # scan variant (same results)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # dt_proj: uniform weights of std dt_rank^-0.5; bias = softplus^-1 of dt ~ logU(dt_min, dt_max)
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real initialisation: A = -(1, 2, ..., d_state) for every channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: Float[Tensor, "b l d_model"]) -> Float[Tensor, "b l d_model"]:
        length = x.shape[1]
        u, z = self.in_proj(x).chunk(2, dim=-1)                         # (b, l, d_inner) each
        u = self.conv1d(u.transpose(1, 2))[..., :length].transpose(1, 2)  # causal: drop the tail
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                            # (b, l, d_inner)
        A = -torch.exp(self.A_log)                                      # (d_inner, d_state)
        if self.parallel:
            y = selective_scan(u, delta, A, B, C, self.D, recompute=self.recompute)
        else:
            y = selective_scan_sequential(u, delta, A, B, C, self.D)
        return self.out_proj(y * F.silu(z))


class ResidualBlock(nn.Module):
    """x + mixer(norm(x)) with an RMSNorm pre-norm.  x: (b, l, d) -> (b, l, d)."""

    def __init__(self, d_model: int, eps: float = 1e-5, **block_kwargs):
        super().__init__()
        self.mixer = MambaBlock(d_model, **block_kwargs)
        self.norm = nn.RMSNorm(d_model, eps=eps)

    def forward(self, x: Float[Tensor, "b l d"]) -> Float[Tensor, "b l d"]:
        return x + self.mixer(self.norm(x))


class MambaBackbone(nn.Module):
    """n_layers pre-norm residual Mamba blocks + a final RMSNorm.  x: (b, l, d) -> (b, l, d).

    Causal along l (left to right, i.e. from short to long wavelength); the transformer that
    follows in SpectralFM gives every token the global context.
    """

    def __init__(self, d_model: int, n_layers: int = 4, d_state: int = 16, expand: int = 2,
                 d_conv: int = 4, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList([
            ResidualBlock(d_model, eps=eps, d_state=d_state, expand=expand, d_conv=d_conv)
            for _ in range(n_layers)])
        self.norm_f = nn.RMSNorm(d_model, eps=eps)

    def forward(self, x: Float[Tensor, "b l d"]) -> Float[Tensor, "b l d"]:
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)
