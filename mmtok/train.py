"""``mmtok train``: the shared masked transformer on a token folder, one process or many.

The same command runs on a laptop CPU, one GPU, or many GPUs / nodes under ``torchrun`` (DDP;
``fsdp: true`` shards parameters with FSDP2 instead). Everything random is a pure function of
``(seed, step)``: the sample order, the masks (drawn for the whole global batch, each rank keeps
its rows) and dropout. With that, the weights and the AdamW state in a checkpoint are all a resumed run
needs to continue exactly where an uninterrupted one would be.

    RUN/
      config.yaml          the resolved training config
      model.json           stream specs + model config (what `load_run` needs)
      metrics.jsonl        one JSON object per logged / evaluated step
      checkpoints/step-000100/{model.safetensors, optimizer.safetensors, state.json}
      checkpoints/latest.json
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from mmtok.codec import atomic_write
from mmtok.errors import MmtokError
from mmtok.model import MaskingConfig, MaskSampler, ModelConfig, MultimodalMaskedTransformer, StreamSpec
from mmtok.model.data import TokenDataset, held_out
from mmtok.plugins import get_plugin_manager

__all__ = ["HeadConfig", "OptimConfig", "TrainConfig", "Trainer", "load_run", "train"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimConfig(_Strict):
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(default=50, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    clip_grad: float | None = Field(default=1.0, gt=0)


class HeadConfig(_Strict):
    """A head from a plugin (`mmtok.hookspecs.HeadSpec`), trained jointly: total loss =
    masked-modelling loss + weight * head loss."""

    head: str
    weight: float = Field(default=1.0, ge=0)
    config: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    #: streams to train on (default: every stream of the token folder)
    streams: list[str] | None = None
    #: a bundle name from a plugin: its streams and heads
    bundle: str | None = None
    heads: dict[str, HeadConfig] = Field(default_factory=dict)
    batch_size: int = Field(default=64, ge=1, description="global batch (all ranks together)")
    max_steps: int = Field(default=1000, ge=1)
    seed: int = 0
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    eval_every: int = Field(default=100, ge=1)
    eval_batches: int = Field(default=20, ge=1)
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    precision: str = Field(default="auto", pattern="^(auto|fp32|bf16)$")
    compile: bool = False
    fsdp: bool = False
    device: str | None = None

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> "TrainConfig":
        data = {}
        if path is not None:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise MmtokError(f"{path}: cannot read the training config ({err})") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            lines = [f"{path or 'config'}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
            raise MmtokError("\n".join(lines)) from None


# ---------------------------------------------------------------------------- distributed
@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _init_dist(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _pick_device(config: TrainConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# ---------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state as flat tensors (safetensors) + the JSON-able rest (no pickle)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"state.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_checkpoint(final: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     state: dict) -> None:
    """Write ``model.safetensors``, ``optimizer.safetensors`` (the optimiser state as flat tensors,
    no pickle) and ``state.json`` (``state`` + the optimiser's param groups) into a temporary
    folder, fsync them, then rename it to ``final``: an interrupted write never leaves a half
    checkpoint."""
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()}, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def read_checkpoint(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device | str = "cpu") -> dict:
    """Load a `write_checkpoint` folder into ``module`` and ``optimizer``; returns its state."""
    module.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    state = json.loads((folder / "state.json").read_text())
    _load_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors"), device=str(device)),
                    state["optimizer"])
    return state


def _seed(config_seed: int, step: int, salt: int = 0) -> int:
    return (config_seed * 1_000_003 + step * 7919 + salt * 104_729) % (2**62)


class TrainModule(nn.Module):
    """The transformer plus plugin heads: what DDP wraps and what a checkpoint stores."""

    def __init__(self, model: MultimodalMaskedTransformer, heads: dict[str, nn.Module]):
        super().__init__()
        self.model = model
        self.heads = nn.ModuleDict(heads)

    def forward(self, batch, masks, normalizer, head_weights: dict[str, float]):
        out = self.model(batch, masks, normalizer)
        loss, head_losses = out.loss, {}
        for name, head in self.heads.items():
            # heads that encode views of the batch themselves (contrastive heads: one encoder pass
            # per side, so the sides cannot see each other) declare ``uses_model = True``
            h = (head.loss(out.features, batch, model=self.model) if getattr(head, "uses_model", False)
                 else head.loss(out.features, batch))
            head_losses[name] = h.detach()
            loss = loss + head_weights[name] * h
        return loss, out, head_losses


def build_heads(config: TrainConfig, model: MultimodalMaskedTransformer) -> dict[str, nn.Module]:
    manager = get_plugin_manager()
    heads = {}
    for name, hc in config.heads.items():
        spec = manager.tables["heads"].get(hc.head)
        if spec is None:
            raise MmtokError(f"heads.{name}: no head {hc.head!r} is installed; heads are "
                             f"{sorted(manager.tables['heads'])}")
        try:
            heads[name] = spec.factory(d_model=model.config.d_model, streams=model.streams, **hc.config)
        except TypeError as err:
            raise MmtokError(f"heads.{name}: cannot build {hc.head!r} with config {hc.config}: {err}") from None
        if not callable(getattr(heads[name], "loss", None)):
            raise MmtokError(f"heads.{name}: {hc.head!r} has no loss(features, batch) method")
    return heads


def _apply_bundle(config: TrainConfig) -> TrainConfig:
    if config.bundle is None:
        return config
    bundle = get_plugin_manager().tables["bundles"].get(config.bundle)
    if bundle is None:
        raise MmtokError(f"no bundle {config.bundle!r} is installed; bundles are "
                         f"{sorted(get_plugin_manager().tables['bundles'])}")
    heads = dict(config.heads)
    for h in bundle.heads:
        heads.setdefault(h, HeadConfig(head=h))
    return config.model_copy(update={"streams": config.streams or list(bundle.streams), "heads": heads})


def load_run(run: str | Path, checkpoint: str | None = None,
             map_location: str | torch.device = "cpu") -> MultimodalMaskedTransformer:
    """The trained transformer of a run folder (latest checkpoint unless ``checkpoint`` names one)."""
    run = Path(run)
    meta_path = run / "model.json"
    if not meta_path.is_file():
        raise MmtokError(f"{run}: no model.json; not an `mmtok train` run folder")
    meta = json.loads(meta_path.read_text())
    streams = {k: StreamSpec.model_validate(v) for k, v in meta["streams"].items()}
    model = MultimodalMaskedTransformer(streams, ModelConfig.model_validate(meta["model"]))
    ckdir = run / "checkpoints"
    name = checkpoint or (json.loads((ckdir / "latest.json").read_text())["checkpoint"]
                          if (ckdir / "latest.json").is_file() else None)
    if name is None:
        raise MmtokError(f"{run}: no checkpoint yet")
    weights = load_file(str(ckdir / name / "model.safetensors"), device=str(map_location))
    own = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    model.load_state_dict(own)
    return model.eval()


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Train `MultimodalMaskedTransformer` on a token folder. See the module docstring."""

    def __init__(self, tokens: str | Path, out: str | Path, config: TrainConfig, progress: bool = True):
        self.config = config = _apply_bundle(config)
        self.out, self.progress = Path(out), progress
        self.device = _pick_device(config)
        self.dist = _init_dist(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.batch_size % self.dist.world:
            raise MmtokError(f"batch_size {config.batch_size} must be divisible by the {self.dist.world} ranks")
        self.data = TokenDataset(tokens, config.streams)
        ids = self.data.sample_ids
        self.val_idx = [i for i, s in enumerate(ids) if held_out(s, config.val_fraction)]
        self.train_idx = [i for i, s in enumerate(ids) if not held_out(s, config.val_fraction)]
        if not self.train_idx:
            raise MmtokError(f"{tokens}: no training samples (val_fraction {config.val_fraction})")
        self.specs = self.data.specs()
        torch.manual_seed(config.seed)
        self.model = MultimodalMaskedTransformer(self.specs, config.model)
        self.sampler = MaskSampler(self.model.layout, config.masking)
        heads = build_heads(config, self.model)
        self.module = TrainModule(self.model, heads).to(self.device)
        self.head_weights = {n: h.weight for n, h in config.heads.items()}
        decay = [p for n, p in self.module.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in self.module.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.optim.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=config.optim.lr, betas=config.optim.betas, fused=True)  # one kernel per step, CPU and CUDA
        self.step = 0
        self._perm: tuple[int, list[int]] = (-1, [])
        self._resume()
        self.wrapped = self._wrap()
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        self.unigram = self._unigram()

    # ---------------------------------------------------------------- setup
    def _wrap(self) -> nn.Module:
        module = self.module
        if self.dist.world > 1 and self.config.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in [*self.model.encoder, *self.model.decoder]:
                fully_shard(block)
            fully_shard(module)
        elif self.dist.world > 1:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            module = torch.compile(module)
        return module

    def lr_at(self, step: int) -> float:
        o = self.config.optim
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        span = max(1, self.config.max_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def global_batch(self, step: int) -> list[int]:
        """Training sample indices of ``step``: epochs of seeded permutations, back to back."""
        n, b = len(self.train_idx), self.config.batch_size
        return [self.train_idx[self._permutation(epoch)[i]]
                for epoch, i in (divmod(pos, n) for pos in range(step * b, (step + 1) * b))]

    def _permutation(self, epoch: int) -> list[int]:
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(_seed(self.config.seed, epoch, salt=1))
            self._perm = (epoch, torch.randperm(len(self.train_idx), generator=g).tolist())
        return self._perm[1]

    def _to(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ---------------------------------------------------------------- training
    def train_step(self, step: int) -> dict:
        cfg = self.config
        gb = self.global_batch(step)
        rows = slice(self.dist.rank, None, self.dist.world)
        local = gb[rows]
        batch = self._to(self.data.batch(local))
        draw = self.sampler.draw(len(gb), _seed(cfg.seed, step))[rows]
        masks = self.sampler(self.model.presence(batch).cpu(), draw).to(self.device)
        count = self.dist.all_sum(masks.target_valid.sum().float().to(self.device))
        normalizer = (count / self.dist.world).clamp_min(1e-6)
        torch.manual_seed(_seed(cfg.seed, step, salt=2 + self.dist.rank))  # dropout
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        self.module.train()
        with self._autocast():
            loss, out, head_losses = self.wrapped(batch, masks, normalizer, self.head_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.optim.clip_grad is not None:
            grad_norm = float(nn.utils.clip_grad_norm_(self.module.parameters(), cfg.optim.clip_grad))
        self.optimizer.step()
        stats = torch.stack([out.loss_sum, out.count, out.correct]).float()
        self.dist.all_sum(stats)
        record = {"step": step + 1, "lr": self.lr_at(step),
                  "loss": float(stats[0].sum() / stats[1].sum().clamp_min(1))}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        for s, key in enumerate(self.model.layout.keys):
            if stats[1, s] > 0:
                record[f"loss/{key}"] = float(stats[0, s] / stats[1, s])
        for name, h in head_losses.items():
            record[f"head/{name}"] = float(self.dist.all_sum(h.float().clone()) / self.dist.world)
        return record

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out masked-token loss / accuracy per stream (fixed masks), with the unigram
        baseline: the train-set token frequencies of each stream."""
        if not self.val_idx:
            return {}
        cfg = self.config
        self.module.eval()
        n = len(self.model.layout)
        totals = torch.zeros(5, n, dtype=torch.float64)  # loss, count, correct, unigram nll, unigram hits
        b = cfg.batch_size
        mine = self.val_idx[self.dist.rank::self.dist.world]
        for k, start in enumerate(range(0, len(mine), b)):
            if k >= cfg.eval_batches:
                break
            idx = mine[start:start + b]
            batch = self._to(self.data.batch(idx))
            draw = self.sampler.draw(len(idx), _seed(cfg.seed + 1, start, salt=3))
            masks = self.sampler(self.model.presence(batch).cpu(), draw).to(self.device)
            with self._autocast():
                out = self.model(batch, masks)
            totals[:3] += torch.stack([out.loss_sum, out.count, out.correct]).double().cpu()
            nll, hits = self._unigram_scores(batch, masks)
            totals[3] += nll
            totals[4] += hits
        self.dist.all_sum(totals)
        rec = {}
        for s, key in enumerate(self.model.layout.keys):
            c = totals[1, s]
            if c == 0:
                continue
            rec[f"val/loss/{key}"] = float(totals[0, s] / c)
            if self.specs[key].is_discrete:
                rec[f"val/acc/{key}"] = float(totals[2, s] / c)
                rec[f"val/unigram_loss/{key}"] = float(totals[3, s] / c)
                rec[f"val/unigram_acc/{key}"] = float(totals[4, s] / c)
        return rec

    def _unigram(self) -> dict[str, torch.Tensor]:
        """Per discrete stream: add-one smoothed log-frequencies of the training tokens."""
        out = {}
        for start in range(0, len(self.train_idx), 512):
            batch = self.data.batch(self.train_idx[start:start + 512])
            for key, spec in self.specs.items():
                if not spec.is_discrete:
                    continue
                ids = batch[f"{key}/ids"][batch[f"{key}/present"].bool()].long().flatten()
                h = torch.bincount(ids, minlength=spec.vocab_size).double()
                out[key] = out.get(key, 0) + h
        return {k: torch.log((h + 1) / (h.sum() + len(h))) for k, h in out.items()}

    def _unigram_scores(self, batch: dict, masks) -> tuple[torch.Tensor, torch.Tensor]:
        lay = self.model.layout
        nll = torch.zeros(len(lay), dtype=torch.float64)
        hits = torch.zeros(len(lay), dtype=torch.float64)
        tgt = masks.target_idx.cpu()
        valid = masks.target_valid.cpu()
        stream = lay.stream_of[tgt]
        for s, key in enumerate(lay.keys):
            if key not in self.unigram:
                continue
            here = valid & (stream == s)
            if not here.any():
                continue
            ids = lay.gather(key, batch[f"{key}/ids"].cpu().long(), tgt)[0][here]
            logp = self.unigram[key]
            nll[s] = float(-logp[ids].sum())
            hits[s] = float((ids == logp.argmax()).sum())
        return nll, hits

    # ---------------------------------------------------------------- checkpoints
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def _state_dict(self) -> dict[str, torch.Tensor]:
        if self.config.fsdp and self.dist.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def save(self) -> Path:
        weights = self._state_dict()
        name = f"step-{self.step:06d}"
        final = self._ckpt_dir() / name
        if self.dist.main:
            write_checkpoint(final, weights, self.optimizer, {"step": self.step, "world_size": self.dist.world})
            atomic_write(self._ckpt_dir() / "latest.json",
                         lambda p: p.write_text(json.dumps({"checkpoint": name, "step": self.step})))
            old = sorted(d for d in self._ckpt_dir().glob("step-*") if d.name != name)
            for d in old[:max(0, len(old) - (self.config.keep_checkpoints - 1))]:
                shutil.rmtree(d, ignore_errors=True)
        self.dist.barrier()
        return final

    def _resume(self) -> None:
        latest = self._ckpt_dir() / "latest.json"
        meta_path = self.out / "model.json"
        meta = {"streams": {k: s.model_dump() for k, s in self.specs.items()},
                "model": self.config.model.model_dump()}
        if latest.is_file():
            old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
            if old is not None and json.loads(json.dumps(meta)) != old:
                raise MmtokError(f"{self.out} holds a run with other streams or model size; "
                                 "choose another --out")
            name = json.loads(latest.read_text())["checkpoint"]
            state = read_checkpoint(self._ckpt_dir() / name, self.module, self.optimizer, self.device)
            self.step = state["step"]
            return
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
            atomic_write(self.out / "config.yaml",
                         lambda p: p.write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False)))
        self.dist.barrier()

    def _log(self, record: dict) -> None:
        if not self.dist.main:
            return
        path = self.out / "metrics.jsonl"
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """A resumed run rewrites the steps after its checkpoint: drop them from the log."""
        path = self.out / "metrics.jsonl"
        if not self.dist.main or not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= self.step]
        atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in keep)))

    def fit(self, max_steps: int | None = None) -> list[dict]:
        """Train until ``max_steps`` (default: the config's); returns the logged records."""
        cfg = self.config
        end = min(max_steps or cfg.max_steps, cfg.max_steps)
        self._trim_metrics()
        records = []
        bar = tqdm(total=end, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.dist.main))
        t0, tokens = time.perf_counter(), 0
        while self.step < end:
            rec = self.train_step(self.step)
            self.step += 1
            tokens += cfg.batch_size * (self.sampler.k_in + self.sampler.k_tgt)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                rec["tokens_per_s"] = tokens / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                self._log(rec)
                records.append(rec)
            if self.step % cfg.eval_every == 0 or self.step == end:
                ev = self.evaluate()
                if ev:
                    ev["step"] = self.step
                    self._log(ev)
                    records.append(ev)
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.save()
        bar.close()
        return records


def train(tokens: str | Path, out: str | Path, config: TrainConfig | None = None,
          max_steps: int | None = None, progress: bool = True) -> Trainer:
    """Train (or resume) a run; returns the trainer."""
    trainer = Trainer(tokens, out, config or TrainConfig(), progress=progress)
    trainer.fit(max_steps)
    return trainer
