"""`Trainer`: the shared masked transformer on a token folder, one process or many.

The same code runs on a laptop CPU, one GPU, or many GPUs / nodes under ``torchrun`` (DDP;
``fsdp: true`` shards parameters with FSDP2 instead). Everything random is a pure function of
``(seed, step)``: the sample order, the masks (drawn for the whole global batch, each rank keeps
its rows) and dropout. With that, the weights and the AdamW state in a checkpoint are all a resumed
run needs to continue exactly where an uninterrupted one would be.

    RUN/
      config.yaml          the resolved training config
      model.json           stream specs + model config (what `mmtok.inference.load_run` needs)
      metrics.jsonl        one JSON object per logged / evaluated step
      checkpoints/step-000100/{model.safetensors, optimizer.safetensors, state.json}
      checkpoints/latest.json
"""

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from mmtok.distributed import full_tensor, init_distributed, pick_device
from mmtok.errors import MmtokError, warn
from mmtok.io import (DamagedFileError, OutputLock, atomic_write, checkpoint_folders, full_optimizer_state,
                      read_checkpoint, read_json, write_checkpoint)
from mmtok.mixture import MixtureSchedule, TokenFolders, folder_name
from mmtok.model import MaskSampler, MultimodalMaskedTransformer
from mmtok.plugins import PluginManager, get_plugin_manager
from mmtok.shards import held_out
from mmtok.tokens import TokenBatch
from mmtok.train.config import TokenFolderConfig, TrainConfig
from mmtok.train.evaluation import UnigramBaseline
from mmtok.train.heads import TrainModule, apply_bundle, build_heads, head_metrics

__all__ = ["Trainer", "train"]


def _seed(config_seed: int, step: int, salt: int = 0) -> int:
    return (config_seed * 1_000_003 + step * 7919 + salt * 104_729) % (2**62)


def _folders(tokens, config: TrainConfig) -> list[TokenFolderConfig]:
    """The run's token folders, named: ``tokens`` (a path or several; None: the config's
    ``tokens``), each with its ``tokens:`` entry's options where the config has one."""
    if tokens is None:
        folders = list(config.tokens)
    else:
        paths = [tokens] if isinstance(tokens, (str, Path)) else list(tokens)
        folders = [config.folder(p) for p in paths]
    if not folders:
        raise MmtokError("no token folder: pass --tokens (or tokens: in the training config)")
    named = [f.model_copy(update={"name": f.name or folder_name(f.path)}) for f in folders]
    seen: dict[str, Path] = {}
    for f in named:
        if f.name in seen:
            raise MmtokError(f"token folders {seen[f.name]} and {f.path} are both named {f.name!r}; give each a "
                             "distinct name (tokens: [{path: ..., name: ...}] in the training config)")
        seen[f.name] = f.path
    return named


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Train `MultimodalMaskedTransformer` on a token folder. See the module docstring."""

    def __init__(self, tokens: str | Path | list[str | Path] | None, out: str | Path, config: TrainConfig,
                 progress: bool = True,
                 manager: PluginManager | None = None):
        manager = manager or get_plugin_manager()
        self.config = config = apply_bundle(config, manager)
        self.out, self.progress = Path(out), progress
        self.device = pick_device(config.device)
        self.dist = init_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.batch_size % self.dist.world:
            raise MmtokError(f"batch_size {config.batch_size} must be divisible by the {self.dist.world} ranks")
        self.folders = _folders(tokens, config)
        self.config = config = config.model_copy(update={"tokens": self.folders})  # config.yaml records them
        self.data = TokenFolders({f.name: f.path for f in self.folders}, config.streams)
        self.data.verify()  # every shard's header and id range, before any step
        val = [held_out(s, *self.folders[f].split(config)) for s, f in zip(self.data.local_ids, self.data.folder_of)]
        self.val_idx = [i for i, v in enumerate(val) if v]
        self.train_idx = [i for i, v in enumerate(val) if not v]
        train_of = [[i for i in self.data.indices_of(f) if not val[i]] for f in range(len(self.folders))]
        for f, t in zip(self.folders, train_of):
            if not t:
                raise MmtokError(f"{f.path}: no training samples (val_fraction {config.val_fraction})")
        weights = [f.weight for f in self.folders]
        if None in weights and any(w is not None for w in weights):
            raise MmtokError("tokens: set weight on every folder or on none (then shares follow the folders' "
                             "sizes and mixture_temperature)")
        self.schedule = MixtureSchedule(train_of, None if None in weights else weights, config.mixture_temperature,
                                        lambda epoch, salt: _seed(config.seed, epoch, salt),
                                        per_folder=config.mixture_batches == "per_folder")
        self.val_of = [[i for i in self.data.indices_of(f) if val[i]] for f in range(len(self.folders))]
        self.specs = self.data.specs()
        torch.manual_seed(config.seed)
        self.model = MultimodalMaskedTransformer(self.specs, config.model)
        self.sampler = MaskSampler(self.model.layout, config.masking)
        heads = build_heads(config.heads, self.model, manager)
        self.module = TrainModule(self.model, heads).to(self.device)
        self.fsdp = config.fsdp and self.dist.world > 1
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if self.fsdp:  # before the optimiser, which must hold the sharded parameters
            self._shard()
        self.head_weights = {n: h.weight for n, h in config.heads.items()}
        decay = [p for n, p in self.module.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in self.module.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.optim.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=config.optim.lr, betas=config.optim.betas, fused=True)  # one kernel per step, CPU and CUDA
        self.step = 0
        with self._lock():
            self._resume()
        self.wrapped = self._wrap()
        self.unigram = UnigramBaseline(self.model.layout, self.specs, self.data.batch, self.train_idx)
        # each folder's held-out streams are scored against that folder's own training frequencies
        self.unigrams = ([self.unigram] if len(train_of) == 1 else
                         [UnigramBaseline(self.model.layout, self.specs, self.data.batch, t) for t in train_of])
        self.token_weight = self._token_weight()

    def _token_weight(self) -> torch.Tensor | None:
        """(joint vocab,) loss weights of the target tokens from ``class_weight`` (None: all 1)."""
        cw = self.config.class_weight
        if not cw:
            return None
        lay = self.model.layout
        weight = torch.ones(max(lay.total_vocab, 1))
        for key, how in cw.items():
            if key not in self.specs:
                raise MmtokError(f"class_weight.{key}: no such stream; the run's streams are {list(self.specs)}")
            spec = self.specs[key]
            if not spec.is_discrete:
                raise MmtokError(f"class_weight.{key}: the stream is continuous; class weights need token ids")
            if how == "balanced":
                n_c = self.unigram.counts[key]
                seen = n_c > 0
                if not seen.any():
                    raise MmtokError(f"class_weight.{key}: the stream has no tokens in the training samples")
                w = torch.ones(spec.vocab_size, dtype=torch.float64)
                w[seen] = n_c.sum() / (int(seen.sum()) * n_c[seen])
            else:
                if len(how) != spec.vocab_size or (how and min(how) < 0):
                    raise MmtokError(f"class_weight.{key}: expected {spec.vocab_size} weights >= 0 (one per "
                                     f"token id of its vocabulary), found {len(how)}"
                                     + (f" with minimum {min(how)}" if how else ""))
                w = torch.tensor(how, dtype=torch.float64)
            start = int(lay.vocab_offset[lay.index(key)])
            weight[start:start + spec.vocab_size] = w.float()
        return weight.to(self.device)

    # ---------------------------------------------------------------- setup
    def _shard(self) -> None:
        """FSDP2: each transformer block, then the model (embeddings, norms, output layers, so that
        `evaluate` can call it directly), then the heads at the root are their own `fully_shard`
        unit. With bf16, parameters are gathered in bf16 and gradients reduced in fp32
        (`MixedPrecisionPolicy`); the sharded master weights and AdamW state stay fp32."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.bf16
                  else MixedPrecisionPolicy())
        for block in [*self.model.encoder, *self.model.decoder]:
            fully_shard(block, mp_policy=policy)
        fully_shard(self.model, mp_policy=policy)
        fully_shard(self.module, mp_policy=policy)

    def _wrap(self) -> nn.Module:
        module = self.module
        if self.dist.world > 1 and not self.fsdp:
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
        """Training sample indices of ``step``: the mixture's seeded epochs, back to back
        (`mmtok.mixture.MixtureSchedule`; one folder: seeded permutations of its training samples)."""
        return self.schedule.batch(step, self.config.batch_size)

    def _to(self, batch: TokenBatch) -> TokenBatch:
        return batch.to(self.device)

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
            loss, out, head_losses = self.wrapped(batch, masks, normalizer, self.head_weights, self.token_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.optim.clip_grad is not None:
            grad_norm = float(full_tensor(nn.utils.clip_grad_norm_(self.module.parameters(), cfg.optim.clip_grad)))
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
        record.update(head_metrics(self.module.heads))  # this rank's view of the last step
        return record

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out masked-token loss / accuracy per stream (fixed masks), with the unigram
        baseline (the train-set token frequencies of each stream) and the number of target tokens
        each stream's metrics rest on (``val/tokens/KEY``). With several token folders, each
        folder's held-out samples are also reported apart (``val/<folder>/loss/KEY``, ...), against
        that folder's own unigram; ``eval_batches`` applies per folder."""
        if not self.val_idx:
            return {}
        n = len(self.model.layout)
        totals = torch.zeros(len(self.folders), 5, n, dtype=torch.float64)
        for f, val in enumerate(self.val_of):
            if val:
                totals[f] = self._evaluate_samples(val, self.unigrams[f])
        rec = self._metrics(totals.sum(0), "val/")
        if len(self.folders) > 1:
            for f, folder in enumerate(self.folders):
                rec.update(self._metrics(totals[f], f"val/{folder.name}/"))
        return rec

    def _evaluate_samples(self, val: list[int], unigram: UnigramBaseline) -> torch.Tensor:
        """(5, streams) summed loss, count, correct, unigram nll, unigram hits over ``val``."""
        cfg = self.config
        self.module.eval()
        totals = torch.zeros(5, len(self.model.layout), dtype=torch.float64)
        b = cfg.batch_size
        mine = val[self.dist.rank::self.dist.world]
        # under FSDP a forward is a collective: every rank runs as many as the rank with the most
        longest = -(-len(val) // self.dist.world) if self.fsdp else len(mine)
        for k, start in enumerate(range(0, longest, b)):
            if k >= cfg.eval_batches:
                break
            idx = mine[start:start + b]
            counted = bool(idx)  # else (FSDP only) a forward to keep in step with the others, not counted
            idx = idx or val[:1]
            batch = self._to(self.data.batch(idx))
            draw = self.sampler.draw(len(idx), _seed(cfg.seed + 1, start, salt=3))
            masks = self.sampler(self.model.presence(batch).cpu(), draw).to(self.device)
            with self._autocast():
                out = self.model(batch, masks)
            if not counted:
                continue
            totals[:3] += torch.stack([out.loss_sum, out.count, out.correct]).double().cpu()
            nll, hits = unigram.scores(batch, masks)
            totals[3] += nll
            totals[4] += hits
        self.dist.all_sum(totals)
        return totals

    def _metrics(self, totals: torch.Tensor, prefix: str) -> dict:
        rec = {}
        for s, key in enumerate(self.model.layout.keys):
            c = totals[1, s]
            if c == 0:
                continue
            rec[f"{prefix}loss/{key}"] = float(totals[0, s] / c)
            rec[f"{prefix}tokens/{key}"] = int(c)  # what the metrics rest on: a handful of tokens is noise
            if self.specs[key].is_discrete:
                rec[f"{prefix}acc/{key}"] = float(totals[2, s] / c)
                rec[f"{prefix}unigram_loss/{key}"] = float(totals[3, s] / c)
                rec[f"{prefix}unigram_acc/{key}"] = float(totals[4, s] / c)
        return rec

    # ---------------------------------------------------------------- checkpoints
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> Path:
        """Write ``checkpoints/step-N`` (whole tensors also under FSDP: every rank gathers, rank 0
        writes), point ``latest.json`` at it and drop the oldest beyond ``keep_checkpoints``."""
        weights = {k: full_tensor(v).detach().cpu() for k, v in self.module.state_dict().items()}
        optimizer = full_optimizer_state(self.optimizer)
        name = f"step-{self.step:06d}"
        final = self._ckpt_dir() / name
        if self.dist.main:
            write_checkpoint(final, weights, optimizer, {"step": self.step, "world_size": self.dist.world,
                                                         "fsdp": self.fsdp})
            atomic_write(self._ckpt_dir() / "latest.json",
                         lambda p: p.write_text(json.dumps({"checkpoint": name, "step": self.step})))
            old = sorted(d for d in self._ckpt_dir().glob("step-*") if d.name != name)
            for d in old[:max(0, len(old) - (self.config.keep_checkpoints - 1))]:
                shutil.rmtree(d, ignore_errors=True)
        self.dist.barrier()
        return final

    @contextlib.contextmanager
    def _lock(self):
        """The run folder's `OutputLock`, held by the main rank: one trainer writes a run at a time.
        Every rank learns whether it was taken, so a refused run ends on all ranks."""
        lock, refused = None, None
        if self.dist.main:
            try:
                lock = OutputLock(self.out, "train").__enter__()
            except MmtokError as err:
                refused = err
        if not self.dist.all_ok(refused is None):
            raise refused or MmtokError(f"rank 0 could not lock {self.out} (its message says why)")
        try:
            yield
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)

    def _resume(self) -> None:
        meta_path = self.out / "model.json"
        meta = {"streams": {k: s.model_dump() for k, s in self.specs.items()},
                "model": self.config.model.model_dump()}
        if meta_path.is_file() and read_json(meta_path) != json.loads(json.dumps(meta)):
            raise MmtokError(f"{self.out} holds a run with other streams or model size; choose another --out")
        candidates = checkpoint_folders(self._ckpt_dir())
        damaged = []
        for folder in candidates:  # the newest intact checkpoint
            try:
                state = read_checkpoint(folder, self.module, self.optimizer, self.device)
            except DamagedFileError as err:
                damaged.append(str(err))
                continue
            if damaged:
                warn(f"{'; '.join(damaged)}; resuming from the newest intact checkpoint, {folder.name}")
            self.step = state["step"]
            return
        if damaged:
            raise MmtokError(f"{self.out}: every checkpoint is damaged ({'; '.join(damaged)}); remove "
                             f"{self._ckpt_dir()} to start the run over")
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
        """A resumed run rewrites the steps after its checkpoint: drop them from the log. A torn
        last line (a killed writer) is dropped with a message; a damaged line elsewhere is an error."""
        path = self.out / "metrics.jsonl"
        if not self.dist.main or not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = []
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    warn(f"{path}: dropped its torn last line ({line[:60]!r}), left by a killed run")
                    continue
                raise MmtokError(f"{path}: line {n} is not JSON ({line[:60]!r}); fix or remove the line") from None
            if record.get("step", 0) <= self.step:
                keep.append(line)
        atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in keep)))

    def fit(self, max_steps: int | None = None) -> list[dict]:
        """Train until ``max_steps`` (default: the config's); returns the logged records. Stopping
        early writes a checkpoint but logs and evaluates on the config's schedule only, so a run
        stopped and resumed logs exactly what an uninterrupted one does."""
        with self._lock():
            return self._fit(max_steps)

    def _fit(self, max_steps: int | None) -> list[dict]:
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
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                rec["tokens_per_s"] = tokens / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                self._log(rec)
                records.append(rec)
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                ev = self.evaluate()
                if ev:
                    ev["step"] = self.step
                    self._log(ev)
                    records.append(ev)
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                self.save()
        bar.close()
        return records


def train(tokens: str | Path | list[str | Path] | None, out: str | Path, config: TrainConfig | None = None,
          max_steps: int | None = None, progress: bool = True) -> Trainer:
    """Train (or resume) a run; returns the trainer."""
    trainer = Trainer(tokens, out, config or TrainConfig(), progress=progress)
    trainer.fit(max_steps)
    return trainer
