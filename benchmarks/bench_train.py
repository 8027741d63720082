"""Training-step speed of mmtok's shared model, against AION-1's copy of 4M, in the same run.

    python benchmarks/bench_train.py [--quick] [--device cpu|cuda] [--compile] [--json out.json]
        [--d-model 384] [--heads 6] [--encoder-depth 6] [--decoder-depth 6]
        [--streams 3] [--vocab 1000] [--tokens 64] [--k-in 128] [--k-tgt 64] [--batch 32]
        [--aion-arch gelu|swiglu] [--no-aion] [--profile]

This is a speed benchmark: the tokens are synthetic (uniformly random ids, every stream present in
every sample), so the losses mean nothing. Both models see the same batch and the same masks.

One training step is ``optimizer.zero_grad(set_to_none=True)``, the forward pass to the loss,
``loss.backward()`` and ``AdamW.step()``. No gradient clipping, no learning-rate schedule.

Contenders (see benchmarks/README.md for what each ratio means):

* ``mmtok``: ``mmtok.model.MultimodalMaskedTransformer`` (``ModelConfig(d_model, num_heads,
  encoder_depth, decoder_depth)``, the rest default) on ``TokenBatch``
  batches, with masks from ``MaskSampler(model.layout, MaskingConfig(input_budget=K_in,
  target_budget=K_tgt))``; ``model(batch, masks).loss``. AdamW (torch's default
  implementation, betas (0.9, 0.95)) with ``mmtok.train.Trainer``'s parameter groups; the same
  for AION.
* ``AION 4M``: ``aion.fourm.fm.FourM`` from ``polymathic-aion`` (imported, not copied) at the same
  width, depth, heads and MLP ratio, in its plain 4M GELU variant (LayerNorm eps 1e-6, biases:
  the same kind of block as mmtok's). Each stream is an ``img``-type modality with
  ``ImageTokenEncoderEmbedding`` / ``ImageTokenDecoderEmbedding`` (vocab V, a 1 x n token grid,
  separate input / output embeddings as AION's ``FM`` builds them). Its per-modality
  ``input_mask`` / ``target_mask`` / ``decoder_attention_mask`` are made from the *same* mmtok
  masks (4M's convention: True = not selected; the first target token of each modality carries
  the target count, as in 4M's ``UnifiedMasking.image_mask``), and
  ``model(mod_dict, K_in, K_tgt, loss_type="mod")[0]`` is the loss. 4M's decoder self-attention
  stays within each modality (its default ``decoder_sep_mask``), mmtok's spans all targets: same
  FLOPs. The decoder's modality order, which 4M shuffles with Python's ``random`` every step, is
  pinned (``random.seed(0)`` before each forward; it doesn't change the result) so that
  ``--compile`` doesn't recompile for each order. ``--aion-arch swiglu`` uses 4M's
  ``fm_*_swiglu_nobias`` block instead (SwiGLU MLP, no biases; same FLOPs). If ``aion`` can't be
  imported the comparison is skipped and the script says how to install it.

Numbers:

* step time: median over the timed blocks; tokens/s = B * (K_in + K_tgt) / step time.
* FLOPs of one step: ``torch.utils.flop_counter.FlopCounterMode`` around forward + backward
  (matmuls, convolutions, attention). The CPU fused attention kernels
  (``_scaled_dot_product_flash_attention_for_cpu`` and its backward) have no formula in torch, so
  this script maps them to torch's own ``sdpa_flop_count`` / ``sdpa_backward_flop_count``;
  without that, mmtok's attention would count as zero on CPU (4M's explicit ``q @ k^T`` and
  ``attn @ v`` are counted as bmm either way).
* MFU = (FLOPs of one step / step time) / matmul peak. The peak is measured in this run, in
  blocks interleaved with the training steps' blocks (so load from other processes hits both):
  the best median ``2 n^3 / time`` of square matmuls (CPU: fp32, n = 2048 and 3072; CUDA: bf16
  inputs, n = 4096 and 8192). On CUDA the models run under ``torch.autocast("cuda",
  torch.bfloat16)``, so the MFU is bf16 MFU against the bf16 peak.

Timing (as in bench_codec.py / bench_encode.py): ``time.perf_counter``; ``warmup`` untimed steps
per contender (2 with ``--quick``, else 3; 2 more with ``--compile``), the first of which runs
under the FLOP counter; each measurement is
``repeats`` blocks of ``number`` steps (``number`` chosen so that a block lasts ``block_s``), the
contenders' blocks interleaved with the order reversed every other block, median block time /
``number`` reported, quartiles in the JSON. ``gc.collect()`` (untimed) before each block. On CUDA
each block starts and ends with ``torch.cuda.synchronize()``. CPU time used by other processes
during each block is recorded (``/proc/stat``) and timings taken under such load are flagged
with ⚠. Torch's thread count is left at its default. ``--compile`` wraps both models' forward in
``torch.compile`` as extra contenders on the same modules and optimisers (eager and compiled rows
in one run, their ratio reported; FLOPs counted on the eager modules). On CUDA MFU is also given
against the data-sheet dense bf16 peak of the device (`BF16_DENSE_PEAK`).
"""

import argparse
import contextlib
import gc
import importlib.metadata
import json
import platform
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

import mmtok
from mmtok import TokenBatch, TokenStream
from mmtok.model import (
    MaskingConfig,
    MaskSampler,
    ModelConfig,
    MultimodalMaskedTransformer,
    StreamSpec,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import _cpu_name  # one CPU-name helper for all benchmarks
from bench_encode import ForeignLoad  # CPU time of other processes, from /proc/stat

#: dense (no sparsity) bf16 tensor-core peak, FLOP/s, from the vendors' data sheets; matched as a
#: substring of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" before "H100")
BF16_DENSE_PEAK = [("GB200", 2.5e15), ("B200", 2.25e15), ("H200", 989e12), ("GH200", 989e12),
                   ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H800", 989e12),
                   ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
                   ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 6000 Ada", 364e12),
                   ("A6000", 155e12), ("RTX 3090", 71e12)]


def datasheet_peak(device_name: str) -> float | None:
    """The dense bf16 peak of ``device_name`` from `BF16_DENSE_PEAK`, or None if not listed."""
    return next((v for k, v in BF16_DENSE_PEAK if k in device_name), None)


TARGETS = {"mfu": 0.35, "ours_over_aion": 0.8}  # MFU >= 0.35; ours at least 1.25x faster than AION
AION_INSTALL = ("`pip install polymathic-aion` (it pulls einops, huggingface_hub, jaxtyping, numpy, scipy and "
                "tokenizers, not torch). After `pip install --no-deps polymathic-aion`, aion.fourm still needs "
                "einops and huggingface_hub with its dependencies, e.g. `pip install einops 'huggingface_hub<1.0' "
                "requests`.")
LOAD = ForeignLoad()
NOISY = 0.1  # share of a CPU used by other processes above which a timing is flagged


# --------------------------------------------------------------------------- FLOPs
def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _flop_mapping() -> dict:
    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_flop
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_backward_flop
    return out


# --------------------------------------------------------------------------- contenders
class TrainStep:
    """zero_grad, forward to the loss, backward, AdamW step. ``loss_fn(module)`` -> scalar."""

    def __init__(self, name: str, module: nn.Module, optimizer, loss_fn, device: str, compile: bool):
        self.name, self.module, self.opt, self.loss_fn = name, module, optimizer, loss_fn
        self.run_module = torch.compile(module) if compile else module
        self.cuda = device == "cuda"
        self.params = sum(p.numel() for p in module.parameters())
        module.train()

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def __call__(self, module: nn.Module | None = None, counter=None) -> None:
        self.opt.zero_grad(set_to_none=True)
        with counter or contextlib.nullcontext():
            with self._autocast():
                loss = self.loss_fn(module or self.run_module)
            loss.backward()
        self.opt.step()

    def compiled(self) -> "TrainStep":
        """The same module and optimiser, forward through ``torch.compile`` (inductor)."""
        twin = TrainStep(f"{self.name} compiled", self.module, self.opt, self.loss_fn,
                         "cuda" if self.cuda else "cpu", compile=True)
        return twin

    def count_flops(self) -> int:
        """FLOPs of forward + backward, counted on the eager module during one real step."""
        counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
        self(self.module, counter)
        return counter.get_total_flops()


def make_streams(args) -> dict[str, StreamSpec]:
    return {f"tok_s{i}": StreamSpec(vocab_size=args.vocab, grid=(args.tokens,)) for i in range(args.streams)}


def make_batch(streams: dict[str, StreamSpec], b: int, device: str, seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    return TokenBatch({key: TokenStream(grid=spec.grid, vocab_size=spec.vocab_size,
                                        ids=torch.randint(0, spec.vocab_size, (b, spec.num_tokens), generator=g).to(device),
                                        present=torch.ones(b, dtype=torch.bool, device=device))
                       for key, spec in streams.items()})


def _adamw(named_params, lr: float = 1e-4):
    """AdamW with mmtok.train.Trainer's groups (decay on >= 2-D weights except embeddings)."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def make_ours(args, streams, batch, device):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=args.d_model, num_heads=args.heads, encoder_depth=args.encoder_depth,
                      decoder_depth=args.decoder_depth)
    model = MultimodalMaskedTransformer(streams, cfg).to(device)
    sampler = MaskSampler(model.layout, MaskingConfig(input_budget=args.k_in, target_budget=args.k_tgt))
    masks = sampler(model.presence(batch).cpu(), sampler.draw(args.batch, 0)).to(device)
    step = TrainStep("mmtok", model, _adamw(model.named_parameters()),
                     lambda m: m(batch, masks).loss, device, False)
    return step, model, masks


def aion_status() -> tuple[bool, str]:
    try:
        import aion.fourm.fm  # noqa: F401
    except Exception as err:  # noqa: BLE001 (any import failure means: skip the comparison)
        return False, f"{type(err).__name__}: {err}"
    return True, importlib.metadata.version("polymathic-aion")


def aion_mod_dict(model: MultimodalMaskedTransformer, batch: TokenBatch, masks) -> dict[str, dict]:
    """4M's per-modality dicts for the same tokens and the same input / target selection."""
    inputs, targets = masks.selection(model.layout.total)
    out = {}
    for key in model.layout.keys:
        sl = model.layout.slots(key)
        input_mask, target_mask = ~inputs[:, sl], ~targets[:, sl]  # 4M: True = not selected
        n = target_mask.shape[1]
        # as 4M's UnifiedMasking.image_mask: the first target token holds the target count, so
        # all targets of a modality attend to each other in the decoder
        first = torch.argmin(target_mask.float() + torch.arange(n, device=target_mask.device) * 1e-6, dim=1)
        dam = torch.zeros(target_mask.shape, dtype=torch.int, device=target_mask.device)
        dam.scatter_(1, first[:, None], (~target_mask).sum(1, keepdim=True).int())
        out[key] = {"tensor": batch[key].ids, "input_mask": input_mask, "target_mask": target_mask,
                    "decoder_attention_mask": dam}
    return out


def make_aion(args, streams, mod_dict, device):
    from aion.fourm.decoder_embeddings import ImageTokenDecoderEmbedding
    from aion.fourm.encoder_embeddings import ImageTokenEncoderEmbedding
    from aion.fourm.fm import FourM
    from aion.fourm.fm_utils import LayerNorm

    torch.manual_seed(0)
    info = {key: {"id": i + 1, "type": "img"} for i, key in enumerate(streams)}
    enc = {key: ImageTokenEncoderEmbedding(vocab_size=s.vocab_size, patch_size=1, image_size=(1, s.num_tokens))
           for key, s in streams.items()}
    dec = {key: ImageTokenDecoderEmbedding(vocab_size=s.vocab_size, patch_size=1, image_size=(1, s.num_tokens),
                                           share_embedding=False)
           for key, s in streams.items()}
    if args.aion_arch == "gelu":  # 4M's fm_*_gelu blocks: the same kind of block as mmtok's
        arch = {"qkv_bias": True, "proj_bias": True, "mlp_bias": True, "act_layer": nn.GELU,
                "gated_mlp": False, "norm_layer": partial(LayerNorm, eps=1e-6)}
    else:  # 4M's fm_*_swiglu_nobias blocks (same FLOPs: the gated MLP's hidden width is 2/3 of 4 d)
        arch = {"qkv_bias": False, "proj_bias": False, "mlp_bias": False, "act_layer": nn.SiLU,
                "gated_mlp": True, "norm_layer": partial(LayerNorm, eps=1e-6, bias=False)}
    model = FourM(encoder_embeddings=enc, decoder_embeddings=dec, modality_info=info, dim=args.d_model,
                  encoder_depth=args.encoder_depth, decoder_depth=args.decoder_depth, num_heads=args.heads,
                  mlp_ratio=4.0, **arch).to(device)
    k_in, k_tgt = args.k_in, args.k_tgt

    def loss(m):
        # 4M shuffles the decoder's modality order every step (Python's random.sample). With
        # decoder_sep_mask and no causal mask the order doesn't change the result, but under
        # torch.compile every one of the S! orders is a recompile, which a real run pays once
        # per order and a short benchmark would keep paying: pin the order.
        random.seed(0)
        # the embeddings write into the per-modality dicts: give them fresh ones
        return m({k: dict(d) for k, d in mod_dict.items()}, k_in, k_tgt, loss_type="mod")[0]
    step = TrainStep(f"AION 4M ({args.aion_arch})", model, _adamw(model.named_parameters()), loss, device,
                     False)
    return step, model


# --------------------------------------------------------------------------- timing
class Timing:
    def __init__(self, device: str, quick: bool, compile: bool = False):
        self.cuda = device == "cuda"
        # untimed calls before the blocks; torch.compile compiles in the first two of them
        self.warmup = (2 if quick else 3) + (2 if compile else 0)
        self.repeats = 3 if quick else 9
        self.block_s = 0.5 if quick else 2.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _block(self, fn, number: int) -> tuple[float, float]:
        gc.collect()
        self.sync()
        mark = LOAD.read()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        self.sync()
        dt = time.perf_counter() - t0
        return dt, LOAD.since(mark)

    def compare(self, *fns, warm: list[float | None] | None = None) -> list[dict]:
        """Time each fn, blocks interleaved; per fn: median / q1 / q3 seconds per call.
        ``warm[i]``: seconds of a call of ``fns[i]`` already made untimed (the FLOP-counting
        step), or None; it counts as the first warm-up call."""
        warm = warm or [None] * len(fns)
        numbers = []
        for fn, per_call in zip(fns, warm):
            for _ in range(self.warmup - (per_call is not None)):
                per_call = self._block(fn, 1)[0]
            numbers.append(max(1, min(1000, round(self.block_s / max(per_call, 1e-7)))))
        samples, foreign = [[] for _ in fns], [[] for _ in fns]
        for r in range(self.repeats):
            for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
                dt, load = self._block(fns[i], numbers[i])
                samples[i].append(dt / numbers[i])
                foreign[i].append((load, dt))
        out = []
        for s, n, f in zip(samples, numbers, foreign):
            q1, _, q3 = statistics.quantiles(s, n=4)
            # /proc/stat ticks in 1/HZ s: allow two ticks of rounding per block
            share = max(0.0, sum(x for x, _ in f) - 2 * len(f) / LOAD.hz) / sum(t for _, t in f)
            out.append({"median_s": statistics.median(s), "q1_s": q1, "q3_s": q3, "min_s": min(s),
                        "number": n, "repeats": len(s), "times_s": s,
                        "foreign_share": share if LOAD.ok else None})
        return out


def peak_fns(device: str, sizes: tuple[int, ...]) -> list:
    """Square matmuls for the peak: fp32 on CPU, bf16 on CUDA (inputs already bf16)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    return [partial(torch.matmul, torch.randn(n, n, device=device, dtype=dtype, generator=g),
                    torch.randn(n, n, device=device, dtype=dtype, generator=g)) for n in sizes]


def peak_result(device: str, sizes: tuple[int, ...], timings: list[dict]) -> dict:
    """The best median 2 n^3 / time over the sizes."""
    rows = [{"size": n, **r, "flops_per_s": 2 * n**3 / r["median_s"]} for n, r in zip(sizes, timings)]
    best = max(rows, key=lambda r: r["flops_per_s"])
    return {"dtype": "bf16" if device == "cuda" else "fp32", "sizes": rows, "best_size": best["size"],
            "peak_flops_per_s": best["flops_per_s"]}


# --------------------------------------------------------------------------- profile
def profile_step(step: TrainStep, device: str, top: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    step()
    with profile(activities=acts) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60)


# --------------------------------------------------------------------------- report
def _ok(value: float, target: float, higher: bool = True) -> str:
    return "yes" if (value >= target if higher else value <= target) else "**no**"


def _spread(r: dict) -> str:
    flag = " ⚠" if (r.get("foreign_share") or 0) > NOISY else ""
    return f"±{100 * (r['q3_s'] - r['q1_s']) / r['median_s']:.0f}%{flag}"


def markdown(res: dict) -> str:
    env, cfg = res["env"], res["config"]
    peak = res["peak"]
    lines = [(f"mmtok {env['mmtok']}, torch {env['torch']}, AION {env['aion'] or 'not installed'}, "
              f"device {env['device']} ({env['device_name']}), {env['threads']} threads, "
              f"{'quick' if env['quick'] else 'full'} run ({env['repeats']} blocks per contender"
              f"{', torch.compile' if env['compile'] else ''}{', bf16 autocast' if env['device'] == 'cuda' else ''})."),
             (f"Model: d_model {cfg['d_model']}, {cfg['heads']} heads, encoder depth {cfg['encoder_depth']}, "
              f"decoder depth {cfg['decoder_depth']}, MLP ratio 4. Data: {cfg['streams']} discrete streams of "
              f"{cfg['tokens']} synthetic tokens (vocab {cfg['vocab']}), batch {cfg['batch']}, "
              f"K_in {cfg['k_in']}, K_tgt {cfg['k_tgt']} ({cfg['tokens_per_step']:,} tokens per step)."),
             "",
             ("| contender | params | GFLOP / step (fwd+bwd) | step ms | IQR | tokens/s | achieved GFLOP/s | "
              f"MFU ({peak['dtype']}, measured peak) | MFU (data-sheet peak) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["contenders"]:
        sheet = f"{r['mfu_datasheet']:.3f}" if r.get("mfu_datasheet") else "n/a"
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['flops'] / 1e9:.1f} | "
                     f"{1e3 * r['timing']['median_s']:.0f} | {_spread(r['timing'])} | "
                     f"{r['tokens_per_s']:,.0f} | {r['achieved_flops_per_s'] / 1e9:.1f} | {r['mfu']:.3f} | {sheet} |")
    lines += ["", "| reference | value |", "|---|---:|"]
    for s in peak["sizes"]:
        lines.append(f"| {peak['dtype']} matmul {s['size']}x{s['size']} (median of {s['repeats']}) | "
                     f"{s['flops_per_s'] / 1e9:,.1f} GFLOP/s |")
    lines.append(f"| **peak used for MFU** | **{peak['peak_flops_per_s'] / 1e9:,.1f} GFLOP/s** |")
    if "datasheet_flops_per_s" in peak:
        v = peak["datasheet_flops_per_s"]
        lines.append(f"| data-sheet dense bf16 peak of {env['device_name']} | "
                     + (f"{v / 1e9:,.0f} GFLOP/s |" if v else "not in the table (BF16_DENSE_PEAK) |"))
    ours = res["contenders"][0]
    lines += ["", "| ratio | target | value |", "|---|---:|---:|",
              (f"| mmtok MFU ({peak['dtype']}) | ≥ {TARGETS['mfu']} | "
               f"{ours['mfu']:.3f} ({_ok(ours['mfu'], TARGETS['mfu'])}) |")]
    cmp = res.get("comparison")
    if cmp:
        v = cmp["ours_over_aion"]
        lines.append(f"| step time mmtok / AION 4M | ≤ {TARGETS['ours_over_aion']} (≥ "
                     f"{1 / TARGETS['ours_over_aion']:.2f}x faster) | {v:.2f} ({1 / v:.2f}x faster; "
                     f"{_ok(v, TARGETS['ours_over_aion'], higher=False)}) |")
        lines.append(f"| FLOPs per step mmtok / AION 4M | | {cmp['flops_ours_over_aion']:.2f} |")
        lines.append(f"| MFU mmtok / AION 4M | | {cmp['mfu_ours_over_aion']:.2f} |")
        if "compiled_ours_over_aion" in cmp:
            v = cmp["compiled_ours_over_aion"]
            lines.append(f"| step time mmtok / AION 4M, both compiled | | {v:.2f} ({1 / v:.2f}x faster) |")
    else:
        lines.append(f"| step time mmtok / AION 4M | ≤ {TARGETS['ours_over_aion']} | skipped |")
        lines += ["", f"AION comparison skipped ({res['aion_error']}). Install it with: {AION_INSTALL}"]
    for i, (name, v) in enumerate(res.get("compile", {}).items()):
        lines.insert(lines.index("| ratio | target | value |") + 2 + i,
                     f"| step time compiled / eager, {name} | | {v:.2f} ({1 / v:.2f}x) |")
    if any((r["timing"].get("foreign_share") or 0) > NOISY for r in res["contenders"]):
        lines += ["", (f"⚠ = other processes used > {100 * NOISY:.0f}% of a CPU during these blocks: "
                       "rerun on a quiet machine.")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="2 warm-up steps (the first counts FLOPs) and 3 blocks per contender (full: 3 and 9)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true",
                   help="also time each model through torch.compile (eager and compiled rows, same run)")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler one step of each contender; print the top ops by self time")
    p.add_argument("--no-aion", action="store_true", help="skip the AION comparison")
    p.add_argument("--aion-arch", default="gelu", choices=["gelu", "swiglu"],
                   help="AION 4M block: gelu (fm_*_gelu, like mmtok's; default) or swiglu (fm_*_swiglu_nobias)")
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--encoder-depth", type=int, default=6)
    p.add_argument("--decoder-depth", type=int, default=6)
    p.add_argument("--streams", type=int, default=3, help="number of discrete streams")
    p.add_argument("--vocab", type=int, default=1000, help="vocabulary of each stream")
    p.add_argument("--tokens", type=int, default=64, help="tokens of each stream")
    p.add_argument("--k-in", type=int, default=128, help="input tokens per sample (encoder)")
    p.add_argument("--k-tgt", type=int, default=64, help="target tokens per sample (decoder)")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.k_in + args.k_tgt > args.streams * args.tokens:
        p.error(f"K_in + K_tgt = {args.k_in + args.k_tgt} exceeds the {args.streams * args.tokens} tokens per sample")

    t_start = time.perf_counter()
    mark = LOAD.read()
    t = Timing(args.device, args.quick, args.compile)
    have_aion, aion_info = (False, "--no-aion") if args.no_aion else aion_status()
    res = {"env": {
        "mmtok": mmtok.__version__, "torch": torch.__version__, "aion": aion_info if have_aion else None,
        "python": platform.python_version(), "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "quick": args.quick, "compile": args.compile,
        "warmup": t.warmup, "repeats": t.repeats, "block_s": t.block_s},
        "config": {**{k: getattr(args, k) for k in ("d_model", "heads", "encoder_depth", "decoder_depth",
                                                     "streams", "vocab", "tokens", "k_in", "k_tgt", "batch")},
                   "tokens_per_step": args.batch * (args.k_in + args.k_tgt)}}
    if not have_aion:
        res["aion_error"] = aion_info

    streams = make_streams(args)
    batch = make_batch(streams, args.batch, args.device)
    ours, model, masks = make_ours(args, streams, batch, args.device)
    steps = [ours]
    if have_aion:
        aion, _ = make_aion(args, streams, aion_mod_dict(model, batch, masks), args.device)
        steps.append(aion)
    eager = len(steps)
    if args.compile:  # each model also through torch.compile, timed in the same interleaved blocks
        steps += [s.compiled() for s in steps]

    print(f"1/2 counting FLOPs ({', '.join(s.name for s in steps[:eager])}) in a first, warm-up step ...",
          flush=True)
    flops, warm = [], []
    for s in steps[:eager]:
        t0 = time.perf_counter()
        flops.append(s.count_flops())
        warm.append(time.perf_counter() - t0)
    flops += flops[:eager] * (len(steps) // eager - 1)  # the compiled twins do the same arithmetic
    warm += [None] * (len(steps) - eager)
    sizes = (4096, 8192) if args.device == "cuda" else (2048, 3072)
    print(f"2/2 timing training steps and the matmul peak, interleaved ({t.warmup} warm-up incl. that one, "
          f"{t.repeats} blocks each) ...", flush=True)
    timings = t.compare(*steps, *peak_fns(args.device, sizes), warm=warm + [None] * len(sizes))
    res["peak"] = peak_result(args.device, sizes, timings[len(steps):])
    if args.device == "cuda":
        res["peak"]["datasheet_flops_per_s"] = datasheet_peak(res["env"]["device_name"])
    peak = res["peak"]["peak_flops_per_s"]
    sheet = res["peak"].get("datasheet_flops_per_s")
    res["contenders"] = []
    for s, f, tm in zip(steps, flops, timings):
        achieved = f / tm["median_s"]
        res["contenders"].append({"name": s.name, "params": s.params, "flops": f, "timing": tm,
                                  "compiled": s.run_module is not s.module,
                                  "tokens_per_s": res["config"]["tokens_per_step"] / tm["median_s"],
                                  "achieved_flops_per_s": achieved, "mfu": achieved / peak,
                                  "mfu_datasheet": achieved / sheet if sheet else None})
    c = res["contenders"]
    if have_aion:
        a, b = c[0], c[1]
        res["comparison"] = {"ours_over_aion": a["timing"]["median_s"] / b["timing"]["median_s"],
                             "flops_ours_over_aion": a["flops"] / b["flops"],
                             "mfu_ours_over_aion": a["mfu"] / b["mfu"]}
        if args.compile:
            res["comparison"]["compiled_ours_over_aion"] = c[2]["timing"]["median_s"] / c[3]["timing"]["median_s"]
    if args.compile:  # compiled step time / eager step time, per model (< 1: compile helps)
        res["compile"] = {c[i]["name"]: c[i + eager]["timing"]["median_s"] / c[i]["timing"]["median_s"]
                          for i in range(eager)}
    if args.profile:
        res["profile"] = {s.name: profile_step(s, args.device) for s in steps}
    res["env"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    if args.json:  # first, so a report bug never loses a run
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    print()
    print(markdown(res))
    for name, table in res.get("profile", {}).items():
        print(f"\n### torch.profiler, one step of {name} (top ops by self time)\n```\n{table}\n```")
    finish(res, args.json)
    return res


def finish(res: dict, json_path) -> None:
    """The closing lines of a benchmark: total time, CPU used by other processes, JSON dump."""
    share = res["env"]["foreign_cpu_share"]
    print(f"\n(total {res['env']['wall_s']} s"
          + (f"; other processes used {100 * share:.0f}% of one CPU meanwhile" if share is not None else "") + ")")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2, default=str)
        print(f"wrote {json_path}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
