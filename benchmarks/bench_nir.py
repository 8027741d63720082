"""SpectralFM speed, same run: the selective-scan backbone against a same-size attention layer at
2048 tokens, and pretraining throughput (spectra/s) with the parallel scan against the plain
sequential scan loop.

    python benchmarks/bench_nir.py [--quick] [--device cpu|cuda] [--tokens 2048] [--dim 128]
        [--batch 4] [--json out.json]

Part 1, one layer, forward + backward on a random (batch, tokens, dim) input (gradients of the
input and all parameters):

* ``attention``: pre-norm multi-head self-attention (SDPA, the fused kernel), q / k / v / o
  projections: `mmtok_plugin_nir.model.transformer.TransformerLayer` without its FFN.
* ``Mamba block, parallel scan``: `MambaBlock` (expand 2, d_state 16: the default config) with the
  odd-even parallel scan and the recomputing backward (what SpectralFM runs).
* ``Mamba block, sequential scan``: the same weights, the scan as a Python loop over tokens.

Part 2, pretraining throughput: one optimiser step of ``SpectralFM.pretrain_losses`` (four views of
each spectrum in one pass, all seven losses) on real Corn spectra at 2048 points, in the ``cpu``
config (patch 32) with the parallel scan and with the sequential scan; spectra/s = batch / step time.

Timing: `bench_train.Timing` (warm-up calls, interleaved blocks, median; ⚠ flags CPU load by
other processes).
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import _cpu_name
from bench_train import LOAD, NOISY, Timing, _spread, finish
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.model.mamba import MambaBlock
from mmtok_plugin_nir.model.spectralfm import SpectralFM, SpectralFMConfig
from mmtok_plugin_nir.model.transformer import TransformerLayer
from mmtok_plugin_nir.model.ttt import block_mask
from mmtok_plugin_nir.preprocessing import add_noise, augment, prepare


class AttentionOnly(nn.Module):
    """The attention half of a transformer layer (norm + SDPA self-attention + residual)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        layer = TransformerLayer(dim, heads)
        self.norm, self.q, self.k, self.v, self.o, self.heads = (layer.norm1, layer.q, layer.k, layer.v, layer.o,
                                                                 heads)

    def forward(self, x):
        b, n, d = x.shape
        h = self.norm(x)
        q, k, v = (p(h).view(b, n, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.o(a.transpose(1, 2).reshape(b, n, d))


def _step(module, fn, x=None):
    def call():
        if x is not None:
            x.grad = None
        for p in module.parameters():
            p.grad = None
        fn().float().sum().backward()
    return call


def layer_calls(args):
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.tokens, args.dim, device=args.device, requires_grad=True)
    attn = AttentionOnly(args.dim, args.heads).to(args.device)
    par = MambaBlock(args.dim, d_state=16, expand=2).to(args.device)
    seq = MambaBlock(args.dim, d_state=16, expand=2, parallel=False).to(args.device)
    seq.load_state_dict(par.state_dict())
    calls = [("attention (SDPA)", attn, _step(attn, lambda: attn(x), x)),
             ("Mamba block, parallel scan", par, _step(par, lambda: par(x), x))]
    if not args.no_sequential:
        calls.append(("Mamba block, sequential scan", seq, _step(seq, lambda: seq(x), x)))
    return calls


def pretrain_calls(args):
    corn = load_corn()
    spectra, wl = prepare(corn.instrument("m5"), corn.wavelength_nm)
    out = []
    for parallel in (True, False):
        torch.manual_seed(0)
        model = SpectralFM(SpectralFMConfig.cpu()).to(args.device)
        if not parallel:
            for layer in model.backbone.layers:
                layer.mixer.parallel = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        clean = spectra[: args.pretrain_batch]
        batch = {"clean": clean, "view1": augment(clean, generator=g), "view2": augment(clean, generator=g),
                 "noisy": add_noise(clean, 0.1, generator=g),
                 "mask": block_mask(len(clean), model.embed.n_patches(2048), 0.3, generator=g),
                 "wavelength_nm": wl, "domain": torch.zeros(len(clean), dtype=torch.long),
                 "instrument": torch.arange(len(clean)) % 3}
        batch = {k: v.to(args.device) for k, v in batch.items()}

        def call(model=model, opt=opt, batch=batch):
            loss = model.pretrain_losses(batch)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append((f"pretraining step, {'parallel' if parallel else 'sequential'} scan", model, call))
    return out


def markdown(res: dict) -> str:
    env, cfg = res["env"], res["config"]
    lines = [f"torch {env['torch']}, {env['device']} ({env['device_name']}), {env['threads']} threads, fp32, "
             f"{'quick' if env['quick'] else 'full'} run.", "",
             f"One layer, forward + backward, batch {cfg['batch']} x {cfg['tokens']} tokens x width {cfg['dim']}:",
             "", "| contender | params | fwd+bwd ms (median) | IQR | time / attention |", "|---|---:|---:|---:|---:|"]
    base = res["layers"][0]["timing"]["median_s"]
    for r in res["layers"]:
        t = r["timing"]
        lines.append(f"| {r['name']} | {r['params']:,} | {1e3 * t['median_s']:.1f} | {_spread(t)} | "
                     f"{t['median_s'] / base:.2f} |")
    lines += ["", f"Pretraining (SpectralFM `cpu` config, {res['pretrain'][0]['params']:,} parameters, batch "
              f"{cfg['pretrain_batch']} real Corn spectra x 2048 points, 4 views each, 7 losses, AdamW):", "",
              "| contender | step ms (median) | IQR | spectra/s | speed-up of the parallel scan |",
              "|---|---:|---:|---:|---:|"]
    seq = res["pretrain"][-1]["timing"]["median_s"]
    for r in res["pretrain"]:
        t = r["timing"]
        lines.append(f"| {r['name']} | {1e3 * t['median_s']:.0f} | {_spread(t)} | "
                     f"{cfg['pretrain_batch'] / t['median_s']:.1f} | {seq / t['median_s']:.2f} |")
    if any((r["timing"].get("foreign_share") or 0) > NOISY for r in res["layers"] + res["pretrain"]):
        lines += ["", f"⚠ = other processes used > {100 * NOISY:.0f}% of a CPU during these blocks."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--no-sequential", action="store_true", help="skip the sequential-scan layer contender")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    t0, mark = time.perf_counter(), LOAD.read()
    timing = Timing(args.device, args.quick)
    res = {"env": {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
                   "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
                   "threads": torch.get_num_threads(), "quick": args.quick},
           "config": {k: getattr(args, k) for k in ("tokens", "dim", "heads", "batch", "pretrain_batch")}}
    for key, make in (("layers", layer_calls), ("pretrain", pretrain_calls)):
        calls = make(args)
        print(f"timing {key}: {', '.join(n for n, _, _ in calls)} ...", flush=True)
        timings = timing.compare(*[c for _, _, c in calls])
        res[key] = [{"name": n, "params": sum(q.numel() for q in m.parameters()), "timing": t}
                    for (n, m, _), t in zip(calls, timings)]
    res["ratios"] = {"mamba_parallel_over_attention": res["layers"][1]["timing"]["median_s"]
                     / res["layers"][0]["timing"]["median_s"],
                     "pretrain_sequential_over_parallel": res["pretrain"][1]["timing"]["median_s"]
                     / res["pretrain"][0]["timing"]["median_s"]}
    res["pretrain_spectra_per_s"] = args.pretrain_batch / res["pretrain"][0]["timing"]["median_s"]
    res["env"]["wall_s"] = round(time.perf_counter() - t0, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    print()
    print(markdown(res))
    finish(res, args.json)
    return res


if __name__ == "__main__":
    main()
