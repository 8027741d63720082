"""`fit_codec`: train a codec on real data; `evaluate_codec`: measure it.

Training minimises reconstruction MSE (in the codec's normalised space) plus the quantizer's
auxiliary loss, with AdamW and a cosine schedule. The progress bar reports reconstruction error
and codebook usage (perplexity and share of codes used over the recent batches).
"""

import dataclasses
import math
from collections import deque

import torch
from tqdm.auto import tqdm

from mmtok.codec import Codec, NeuralCodec
from mmtok.errors import CodecError
from mmtok.manifest import Manifest
from mmtok.modality import Modality
from mmtok.plugins import PluginManager, get_plugin_manager
from mmtok.registry import Registry, find_registry
from mmtok.shards import TokenShards

__all__ = ["FitReport", "fit_codec", "evaluate_codec", "evaluate_shards", "reconstruction_errors",
           "codebook_usage"]


def codebook_usage(ids: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Perplexity (exp of the code entropy) and share of the vocabulary used by ``ids``."""
    counts = torch.bincount(ids.reshape(-1).cpu(), minlength=vocab_size).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"perplexity": float(entropy.exp()), "codes_used": used, "usage": used / vocab_size}


@dataclasses.dataclass
class FitReport:
    """Result of `fit_codec` / `evaluate_codec` (all on the evaluation data)."""

    codec: str
    steps: int
    recon_mse: float  # MSE in the normalised space
    rmse: float  # RMSE in the data's own units
    nrmse: float  # RMSE / std of the data, averaged over channels (0 = perfect, 1 = predicting the mean)
    rmse_per_channel: list[float]
    perplexity: float | None
    codes_used: int | None
    usage: float | None
    vocab_size: int | None
    num_tokens: int
    history: list[dict] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        s = f"{self.codec}: rmse {self.rmse:.4g}, nrmse {self.nrmse:.3f}, tokens {self.num_tokens}"
        if self.vocab_size:
            s += (f", vocab {self.vocab_size}, perplexity {self.perplexity:.1f}, "
                  f"codes used {self.codes_used} ({100 * self.usage:.1f}%)")
        return s


def reconstruction_errors(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[float, float, list[float]]:
    """(RMSE, nRMSE, RMSE per channel) of x_hat against x, both (n, c, ...). nRMSE divides each
    channel's RMSE by that channel's standard deviation over the data, then averages channels."""
    err = (x_hat.float() - x.float()).transpose(0, 1).flatten(1)  # (c, everything else)
    ref = x.float().transpose(0, 1).flatten(1)
    rmse_c = err.pow(2).mean(1).sqrt()
    if ref.shape[1] < 2:  # one value per channel (one sample of one pixel): no spread to divide by
        return float(err.pow(2).mean().sqrt()), float("nan"), [float(v) for v in rmse_c]
    nrmse = (rmse_c / ref.std(1).clamp_min(1e-12)).mean()
    return float(err.pow(2).mean().sqrt()), float(nrmse), [float(v) for v in rmse_c]


@torch.no_grad()
def evaluate_shards(tokens_dir, manifest_path, registry_path=None,
                    manager: PluginManager | None = None) -> dict[str, dict]:
    """Decode every encoded sample of every stream in an ``mmtok encode`` output and compare it
    with the original data from the manifest. Returns stream -> samples, rmse, nrmse,
    rmse_per_channel, codes_used, usage."""
    manager = manager or get_plugin_manager()
    shards = TokenShards(tokens_dir)
    registry = Registry.load(find_registry(registry_path, tokens=tokens_dir).path)
    manifest = Manifest.load(manifest_path)
    by_id = {s.id: s for s in manifest.samples}
    out = {}
    for key, info in shards.streams.items():
        codec = registry.codec(key, manager)
        originals, decoded = [], []
        for s in shards.index["samples"]:
            if key in s["streams"]:
                m = manifest.load_modality(by_id[s["id"]], info["modality"], manager)
                originals.append(codec.reconstruction_target(m).float())
                decoded.append(getattr(codec.decode(shards.stream(s["id"], key),
                                                    **codec.passthrough_fields(m)), codec.field).float())
        if not originals:
            continue
        rmse, nrmse, rmse_c = reconstruction_errors(torch.cat(originals), torch.cat(decoded))
        counts = shards.index["counts"][key]
        out[key] = {"samples": len(originals), "rmse": rmse, "nrmse": nrmse, "rmse_per_channel": rmse_c,
                    "codes_used": counts["codes_used"], "usage": counts["usage"],
                    "vocab_size": info["vocab_size"], "num_tokens": info["num_tokens"]}
    return out


@torch.no_grad()
def evaluate_codec(codec: Codec, data: Modality, *, steps: int = 0, history=None,
                   batch_size: int = 256) -> FitReport:
    """Encode -> decode ``data`` and compare with the original field (as the codec sees it:
    `Codec.reconstruction_target`)."""
    streams, recon, targets, mse = [], [], [], []
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        stream = codec.encode(batch)
        decoded = codec.decode(stream, **codec.passthrough_fields(batch))
        # error in the codec's own (normalised) space, as minimised by fit_codec
        mse.append(codec.reconstruction_loss(codec.preprocess(batch), codec.preprocess(decoded)) * len(batch))
        streams.append(stream)
        recon.append(getattr(decoded, codec.field).float())
        targets.append(codec.reconstruction_target(batch).float())
    rmse, nrmse, rmse_c = reconstruction_errors(torch.cat(targets), torch.cat(recon))
    usage = {"perplexity": None, "codes_used": None, "usage": None}
    if codec.is_discrete:
        usage = codebook_usage(torch.cat([s.ids for s in streams]), codec.vocab_size)
    return FitReport(codec=codec.name, steps=steps, recon_mse=float(sum(mse) / len(data)),
                     rmse=rmse, nrmse=nrmse, rmse_per_channel=rmse_c, vocab_size=codec.vocab_size,
                     num_tokens=codec.num_tokens, history=history or [], **usage)


def fit_codec(codec: Codec, train: Modality, *, val: Modality | None = None, steps: int = 2000,
              batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4,
              warmup: int = 50, seed: int = 0, progress: bool = True, log_every: int = 50,
              device: str | torch.device | None = None) -> FitReport:
    """Fit ``codec`` on the batch ``train`` (all training samples); report on ``val`` (or train).

    Fits the codec's statistics (normalisation, quantile tables) first, then, for learned
    codecs (`NeuralCodec`), runs ``steps`` AdamW steps on random mini-batches. Deterministic given ``seed``.
    """
    if not isinstance(train, codec.modality):
        raise CodecError(f"fit_codec: {codec.name} trains on {codec.modality.__name__}, "
                         f"got {type(train).__name__}")
    if len(train) < 2:
        raise CodecError(f"fit_codec: need at least 2 training samples, got {len(train)}")
    device = torch.device(device or "cpu")
    codec.to(device)
    train = train.to(device)
    torch.manual_seed(seed)
    codec.fit_statistics(train)
    history: list[dict] = []
    if isinstance(codec, NeuralCodec) and steps > 0:
        codec.train()
        opt = torch.optim.AdamW(codec.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, warmup))
            * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        gen = torch.Generator().manual_seed(seed)
        recent: deque = deque(maxlen=20)
        bar = tqdm(range(steps), desc=f"fit {codec.name}", disable=not progress, leave=False)
        for step in bar:
            idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
            out = codec(train[idx.to(device)])
            recon = codec.reconstruction_loss(out.x, out.x_hat)
            loss = recon + out.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
            opt.step()
            sched.step()
            if out.ids is not None:
                recent.append(out.ids.detach())
            if step % log_every == 0 or step == steps - 1:
                row = {"step": step, "loss": loss.item(), "recon": recon.item(),
                       "aux": out.aux_loss.item()}
                if recent:
                    row.update(codebook_usage(torch.cat(list(recent)), codec.vocab_size))
                history.append(row)
                bar.set_postfix(recon=f"{row['recon']:.4f}",
                                ppl=f"{row.get('perplexity', 0):.1f}",
                                used=f"{100 * row.get('usage', 0):.0f}%")
    codec.eval()
    report = evaluate_codec(codec, (val if val is not None else train).to(device), steps=steps, history=history)
    codec.to("cpu")
    return report
