"""SpectralFM speed, same run: one Mamba block against a same-width attention layer and against
mambapy's own block at several lengths, and pretraining throughput (spectra/s) with the default
scan against the plain sequential scan loop.

    python benchmarks/bench_nir.py [--quick] [--device cpu|cuda] [--tokens 512,2048,8192] [--dim 128]
        [--batch 2] [--scans chunked[,parallel,sequential]] [--no-mambapy] [--no-pretrain]
        [--threads N] [--json out.json]

Part 1, one layer, forward + backward on a random (batch, tokens, dim) input (gradients of the
input and all parameters), for each length in --tokens (contenders interleaved per length):

* ``attention``: pre-norm multi-head self-attention (SDPA, the fused kernel), q / k / v / o
  projections: `mmtok_plugin_nir.model.transformer.TransformerLayer` without its FFN.
* ``Mamba block, chunked scan``: `MambaBlock` (expand 2, d_state 16: the default config) with the
  chunked scan (the default, what SpectralFM runs); ``--scans`` adds the odd-even ``parallel`` scan
  and the ``sequential`` loop (the sequential loop only up to 2048 tokens: minutes per call beyond).
* ``mambapy MambaBlock (pscan)``: `mambapy.mamba.MambaBlock` with its own parallel scan, on the
  same weights (its state_dict loads into ours).

Printed per length: ms per call, block / attention, ours / mambapy; and the cost growth from the
shortest to the longest length as the ratio of ms per token (1 = linear, tokens ratio = quadratic).

Part 2, pretraining throughput: one optimiser step of ``SpectralFM.pretrain_losses`` (four views of
each spectrum in one pass, all seven losses) on real Corn spectra at 2048 points, in the ``cpu``
config (patch 32) with the default (chunked) scan and with the sequential scan; spectra/s = batch /
step time.

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

try:
    from mambapy import mamba as mambapy
except ImportError:                                   # optional reference
    mambapy = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_codec import _cpu_name
from bench_train import LOAD, NOISY, Timing, _spread, finish
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.model.mamba import SCANS, MambaBlock
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


SEQUENTIAL_MAX_TOKENS = 2048


def layer_calls(args, tokens: int):
    """(name, module, call) for each part-1 contender at one length."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, tokens, args.dim, device=args.device, requires_grad=True)
    attn = AttentionOnly(args.dim, args.heads).to(args.device)
    calls = [("attention (SDPA)", attn, _step(attn, lambda: attn(x), x))]
    first = None
    for scan in args.scans:
        if scan == "sequential" and tokens > SEQUENTIAL_MAX_TOKENS:
            continue
        block = MambaBlock(args.dim, d_state=16, expand=2, scan=scan).to(args.device)
        if first is None:
            first = block
        else:
            block.load_state_dict(first.state_dict())
        calls.append((f"Mamba block, {scan} scan", block, _step(block, lambda b=block: b(x), x)))
    if mambapy is not None and not args.no_mambapy:
        ref = mambapy.MambaBlock(mambapy.MambaConfig(d_model=args.dim, n_layers=1, d_state=16, expand_factor=2,
                                                     pscan=True)).to(args.device)
        ref.load_state_dict(first.state_dict())
        calls.append(("mambapy MambaBlock (pscan)", ref, _step(ref, lambda: ref(x), x)))
    return calls


def pretrain_calls(args):
    corn = load_corn()
    spectra, wl = prepare(corn.instrument("m5"), corn.wavelength_nm)
    out = []
    for parallel in (True, False):
        torch.manual_seed(0)
        model = SpectralFM(SpectralFMConfig.cpu()).to(args.device)
        scan = model.backbone.layers[0].mixer.scan
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
        out.append((f"pretraining step, {scan if parallel else 'sequential'} scan", model, call))
    return out


def _ms(r) -> float:
    return 1e3 * r["timing"]["median_s"]


def layer_summary(rows: list[dict]) -> dict:
    """Per length: block / attention and ours / mambapy; growth of ms per token, shortest -> longest."""
    out = {"per_tokens": [], "growth": {}}
    for t in sorted({r["tokens"] for r in rows}):
        at = {r["name"]: r for r in rows if r["tokens"] == t}
        attn, ref = at["attention (SDPA)"], at.get("mambapy MambaBlock (pscan)")
        entry = {"tokens": t, "attention_ms": _ms(attn)}
        for name, r in at.items():
            if name.startswith("Mamba block"):
                scan = name.split(", ")[1].split()[0]
                entry[f"{scan}_ms"] = _ms(r)
                entry[f"{scan}_over_attention"] = _ms(r) / _ms(attn)
                if ref is not None:
                    entry[f"{scan}_over_mambapy"] = _ms(r) / _ms(ref)
        if ref is not None:
            entry["mambapy_ms"] = _ms(ref)
        out["per_tokens"].append(entry)
    lo, hi = min(r["tokens"] for r in rows), max(r["tokens"] for r in rows)
    for name in dict.fromkeys(r["name"] for r in rows):
        a = [r for r in rows if r["name"] == name and r["tokens"] == lo]
        b = [r for r in rows if r["name"] == name and r["tokens"] == hi]
        if a and b and hi > lo:
            out["growth"][name] = {"from": lo, "to": hi, "per_token_ratio": (_ms(b[0]) / hi) / (_ms(a[0]) / lo)}
    return out


def markdown(res: dict) -> str:
    env, cfg = res["env"], res["config"]
    lines = [f"torch {env['torch']}, {env['device']} ({env['device_name']}), {env['threads']} threads, fp32, "
             f"{'quick' if env['quick'] else 'full'} run.", "",
             f"One layer, forward + backward, batch {cfg['batch']} x tokens x width {cfg['dim']} "
             f"(Mamba: expand 2, d_state 16):", "",
             "| tokens | contender | params | fwd+bwd ms (median) | IQR | time / attention | time / mambapy |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for t in cfg["tokens"]:
        rows = [r for r in res["layers"] if r["tokens"] == t]
        base = rows[0]["timing"]["median_s"]
        ref = [r for r in rows if r["name"].startswith("mambapy")]
        for r in rows:
            tm = r["timing"]
            vs_ref = f"{tm['median_s'] / ref[0]['timing']['median_s']:.2f}" if ref else "–"
            lines.append(f"| {t} | {r['name']} | {r['params']:,} | {1e3 * tm['median_s']:.1f} | {_spread(tm)} | "
                         f"{tm['median_s'] / base:.2f} | {vs_ref} |")
    growth = res["layer_summary"]["growth"]
    if growth:
        g0 = next(iter(growth.values()))
        lines += ["", f"Cost growth {g0['from']} -> {g0['to']} tokens (ms per token at {g0['to']} / at {g0['from']}; "
                  f"1 = linear, {g0['to'] / g0['from']:.0f} = quadratic):", "",
                  "| contender | ms / token growth |", "|---|---:|"]
        lines += [f"| {name} | {g['per_token_ratio']:.2f} |" for name, g in growth.items()]
    if not res.get("pretrain"):
        return "\n".join(lines)
    lines += ["", f"Pretraining (SpectralFM `cpu` config, {res['pretrain'][0]['params']:,} parameters, batch "
              f"{cfg['pretrain_batch']} real Corn spectra x 2048 points, 4 views each, 7 losses, AdamW):", "",
              "| contender | step ms (median) | IQR | spectra/s | speed-up over the sequential scan |",
              "|---|---:|---:|---:|---:|"]
    seq = res["pretrain"][-1]["timing"]["median_s"]
    for r in res["pretrain"]:
        t = r["timing"]
        lines.append(f"| {r['name']} | {1e3 * t['median_s']:.0f} | {_spread(t)} | "
                     f"{cfg['pretrain_batch'] / t['median_s']:.1f} | {seq / t['median_s']:.2f} |")
    if any((r["timing"].get("foreign_share") or 0) > NOISY for r in res["layers"] + res.get("pretrain", [])):
        lines += ["", f"⚠ = other processes used > {100 * NOISY:.0f}% of a CPU during these blocks."]
    return "\n".join(lines)


def _token_list(text: str) -> list[int]:
    try:
        tokens = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens: expected comma-separated integers, got {text!r}") from None
    if not tokens or tokens[0] < 1:
        raise argparse.ArgumentTypeError(f"--tokens: expected positive lengths, got {text!r}")
    return tokens


def _scan_list(text: str) -> list[str]:
    scans = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in scans if t not in SCANS]
    if bad or not scans:
        raise argparse.ArgumentTypeError(f"--scans: expected a comma-separated subset of {SCANS}, got {text!r}")
    return scans


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter timing blocks (all lengths kept)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=_token_list, default=[512, 2048, 8192], help="part-1 lengths, e.g. 512,2048,8192")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--scans", type=_scan_list, default=["chunked"],
                   help=f"Mamba-block scans to time in part 1, a subset of {SCANS} (first = the one compared)")
    p.add_argument("--no-sequential", action="store_true",
                   help="drop the sequential scan from --scans (and from nothing else)")
    p.add_argument("--no-mambapy", action="store_true", help="skip mambapy's MambaBlock in part 1")
    p.add_argument("--no-pretrain", action="store_true", help="skip part 2 (pretraining throughput)")
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads: expected >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.no_sequential:
        args.scans = [s for s in args.scans if s != "sequential"] or ["chunked"]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    t0, mark = time.perf_counter(), LOAD.read()
    timing = Timing(args.device, args.quick)
    res = {"env": {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
                   "device_name": torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name(),
                   "threads": torch.get_num_threads(), "quick": args.quick},
           "config": {k: getattr(args, k) for k in ("tokens", "dim", "heads", "batch", "scans", "pretrain_batch")},
           "layers": []}
    for tokens in args.tokens:
        calls = layer_calls(args, tokens)
        print(f"timing layers at {tokens} tokens: {', '.join(n for n, _, _ in calls)} ...", flush=True)
        timings = timing.compare(*[c for _, _, c in calls])
        res["layers"] += [{"name": n, "tokens": tokens, "params": sum(q.numel() for q in m.parameters()), "timing": t}
                          for (n, m, _), t in zip(calls, timings)]
        del calls
    res["layer_summary"] = layer_summary(res["layers"])
    if not args.no_pretrain:
        calls = pretrain_calls(args)
        print(f"timing pretraining: {', '.join(n for n, _, _ in calls)} ...", flush=True)
        timings = timing.compare(*[c for _, _, c in calls])
        res["pretrain"] = [{"name": n, "params": sum(q.numel() for q in m.parameters()), "timing": t}
                           for (n, m, _), t in zip(calls, timings)]
        res["pretrain_sequential_over_default"] = (res["pretrain"][1]["timing"]["median_s"]
                                                   / res["pretrain"][0]["timing"]["median_s"])
        res["pretrain_spectra_per_s"] = args.pretrain_batch / res["pretrain"][0]["timing"]["median_s"]
    res["env"]["wall_s"] = round(time.perf_counter() - t0, 1)
    res["env"]["foreign_cpu_share"] = LOAD.since(mark) / res["env"]["wall_s"] if LOAD.ok else None
    print()
    print(markdown(res))
    finish(res, args.json)
    return res


if __name__ == "__main__":
    main()
