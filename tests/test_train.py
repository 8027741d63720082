"""`mmtok train` on real tokens (the diabetes study of examples/clinic): exact resume, torchrun
with two ranks against one, plugin heads, and the embed / impute commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mmtok
from mmtok.encode import encode_manifest
from mmtok.hookspecs import HeadSpec
from mmtok.train import TrainConfig, Trainer
import mmtok_plugin_tabular  # noqa: F401 - the clinic registry's codecs

from helpers import fake_dist

CLINIC = Path(__file__).resolve().parents[1] / "examples" / "clinic"

CONFIG = {"model": {"d_model": 32, "num_heads": 4, "encoder_depth": 2, "decoder_depth": 1},
          "masking": {"input_budget": 4, "target_budget": 3}, "batch_size": 16, "max_steps": 6,
          "log_every": 1, "eval_every": 3, "checkpoint_every": 3, "eval_batches": 2,
          "optim": {"lr": 3e-3, "warmup_steps": 2}}


@pytest.fixture(scope="session")
def tokens(tmp_path_factory) -> Path:
    """442 real patients (vitals missing for every 3rd, labs for every 4th) as token shards."""
    out = tmp_path_factory.mktemp("clinic") / "tokens"
    encode_manifest(CLINIC / "manifest.json", out, registry_path=CLINIC / "registry.yaml", progress=False)
    return out


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_resume_gives_the_weights_of_an_uninterrupted_run(tokens, tmp_path):
    config = TrainConfig.model_validate(CONFIG)
    straight = Trainer(tokens, tmp_path / "straight", config, progress=False)
    straight.fit()
    first = Trainer(tokens, tmp_path / "resumed", config, progress=False)
    first.fit(max_steps=3)  # stops at the step-3 checkpoint, like a killed job
    resumed = Trainer(tokens, tmp_path / "resumed", config, progress=False)
    assert resumed.step == 3
    resumed.fit()
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa = load_file(str(tmp_path / "straight" / "checkpoints" / "step-000006" / "optimizer.safetensors"))
    ob = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000006" / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")  # log rewritten, not duplicated
    # the weights changed, so the comparison above means something
    init = Trainer(tokens, tmp_path / "fresh", config, progress=False).module.state_dict()
    assert not torch.equal(init["model.token_embedding.weight"], a["model.token_embedding.weight"])


ROWS_HEAD = """
    import torch
    from mmtok import HeadSpec, hookimpl

    class Rows(torch.nn.Module):
        \"\"\"Adds 0 to the loss; reports how many samples this rank's batch holds.\"\"\"

        def __init__(self, d_model, streams):
            super().__init__()

        def loss(self, features, batch):
            self.rows = features.pooled.shape[0]
            return features.pooled.sum() * 0.0

        def metrics(self):
            return {"rows": self.rows}

    @hookimpl
    def mmtok_heads():
        return [HeadSpec("rank-rows", Rows)]
"""


def test_torchrun_two_ranks_match_one(tokens, tmp_path):
    """Same losses and weights with two ranks as with one; the two-rank run really had two ranks
    (its checkpoint says so) each training on half of every batch (a head reports rank 0's rows)."""
    fake_dist(tmp_path, "mmtok-plugin-rows", "rowsplug", ROWS_HEAD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({**CONFIG, "heads": {"rows": {"head": "rank-rows"}}}))  # JSON is YAML
    base = ["-m", "mmtok.cli", "train", "--tokens", str(tokens), "--config", str(cfg), "--quiet"]
    one = subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *base, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=600,
                         env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) == 6
    assert l1 == pytest.approx(l2, rel=1e-4), (l1, l2)
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step-000006" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    for run, world in (("one", 1), ("two", 2)):
        state = json.loads((tmp_path / run / "checkpoints" / "step-000006" / "state.json").read_text())
        assert state["world_size"] == world, (run, state)
        records = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        rows = [r["head/rows/rows"] for r in records if "loss" in r]
        assert rows == [CONFIG["batch_size"] // world] * 6, (run, rows)


class VitalsPresentHead(nn.Module):
    """Toy plugin head: from the pooled features, does the patient have vitals?"""

    def __init__(self, d_model: int, streams: dict, stream: str = "tok_vitals"):
        super().__init__()
        self.stream = stream
        self.linear = nn.Linear(d_model, 1)
        self.probe = nn.Parameter(torch.zeros(()))  # adds 0: its gradient is this head's weight in the total loss

    def loss(self, features, batch):
        target = batch[self.stream].present.float()
        logits = self.linear(features.pooled).squeeze(-1)
        self._accuracy = float(((logits > 0).float() == target).float().mean())
        return nn.functional.binary_cross_entropy_with_logits(logits, target) + self.probe

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self._accuracy}


def test_a_plugin_head_is_trained_jointly(tokens, tmp_path):
    class Heads:
        @mmtok.hookimpl
        def mmtok_heads(self):
            return [HeadSpec("vitals-present", VitalsPresentHead)]

    mmtok.get_plugin_manager().register(Heads(), "test-heads")
    config = TrainConfig.model_validate({**CONFIG, "heads": {"vp": {"head": "vitals-present", "weight": 0.5}}})
    trainer = Trainer(tokens, tmp_path / "run", config, progress=False)
    before = trainer.module.heads["vp"].linear.weight.detach().clone()
    grads = []  # d(total loss) / d(probe) of every step, before clipping: the configured weight
    trainer.module.heads["vp"].probe.register_hook(lambda g: grads.append(float(g)))
    records = trainer.fit()
    assert grads == [0.5] * 6
    assert all("head/vp" in r and 0 <= r["head/vp/accuracy"] <= 1 for r in records if "loss" in r)
    assert not torch.equal(before, trainer.module.heads["vp"].linear.weight)
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-000006" / "model.safetensors"))
    assert "heads.vp.linear.weight" in saved
    bad = TrainConfig.model_validate({**CONFIG, "heads": {"x": {"head": "no-such-head"}}})
    with pytest.raises(mmtok.MmtokError, match="no head 'no-such-head'"):
        Trainer(tokens, tmp_path / "bad", bad, progress=False)


def test_cli_train_embed_impute(tokens, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(CONFIG))
    run = tmp_path / "run"

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "mmtok.cli", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    shown = cli("train", "--tokens", str(tokens), "--out", str(run), "--config", str(cfg), "--quiet")
    assert "| tok_labs |" in shown.stdout and (run / "checkpoints" / "latest.json").is_file()
    cli("embed", str(run), "--tokens", str(tokens), "--out", str(tmp_path / "emb.safetensors"))
    emb = load_file(str(tmp_path / "emb.safetensors"))["embedding"]
    assert emb.shape == (442, 32) and torch.isfinite(emb).all()
    cli("impute", str(run), "--tokens", str(tokens), "--stream", "tok_vitals", "--out",
        str(tmp_path / "imp.safetensors"), "--decode")
    imp = load_file(str(tmp_path / "imp.safetensors"))
    assert imp["tok_vitals/ids"].shape == (148, 1) and imp["tok_vitals/decoded"].shape == (148, 1)
    bad = subprocess.run([sys.executable, "-m", "mmtok.cli", "impute", str(run), "--tokens", str(tokens),
                          "--stream", "tok_nope", "--out", str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "tok_nope" in bad.stderr and "Traceback" not in bad.stderr
    again = subprocess.run([sys.executable, "-m", "mmtok.cli", "train", "--tokens", str(tokens), "--out", str(run),
                            "--config", str(cfg), "--quiet"], capture_output=True, text=True)
    assert again.returncode == 0 and "trained steps 6..6" in again.stdout  # finished run: nothing to do


def test_a_bundle_brings_its_streams_and_heads(tokens, tmp_path):
    from mmtok.hookspecs import BundleSpec

    tables = mmtok.get_plugin_manager().tables
    tables["heads"]["vitals-present"] = HeadSpec("vitals-present", VitalsPresentHead)
    tables["bundles"]["clinic-lite"] = BundleSpec("clinic-lite", ("tok_demographics", "tok_vitals"),
                                                  ("vitals-present",))
    config = TrainConfig.model_validate({**CONFIG, "bundle": "clinic-lite", "max_steps": 2})
    trainer = Trainer(tokens, tmp_path / "run", config, progress=False)
    assert list(trainer.model.streams) == ["tok_demographics", "tok_vitals"]
    assert list(trainer.module.heads) == ["vitals-present"]
    assert all("head/vitals-present" in r for r in trainer.fit() if "loss" in r)


def _launch(args: list[str], ranks: int) -> None:
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                          "-m", "mmtok.cli", *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _checkpoint(run: Path, step: int) -> tuple[dict, dict]:
    folder = run / "checkpoints" / f"step-{step:06d}"
    return load_file(str(folder / "model.safetensors")), load_file(str(folder / "optimizer.safetensors"))


def _keep_only(run: Path, src: Path, step: int) -> None:
    """``run``: ``src``'s run folder as a job killed after its step-``step`` checkpoint left it."""
    import shutil

    shutil.copytree(src, run)
    for d in (run / "checkpoints").glob("step-*"):
        if d.name != f"step-{step:06d}":
            shutil.rmtree(d)
    (run / "checkpoints" / "latest.json").unlink()


def test_fsdp_two_ranks_match_one_process_resume_exactly_and_load_both_ways(tokens, tmp_path):
    """``fsdp: true`` (FSDP2 ``fully_shard``, gloo) on 2 ranks: the losses and weights of one
    process (which DDP matches, the test above) to 1e-4 / 1e-5; a run resumed from its own step-3
    checkpoint ends bit-identical to the uninterrupted one; its checkpoint (whole tensors) resumes in
    one process, and one process's checkpoint resumes under FSDP, both ending where one process does."""
    config = {**CONFIG, "keep_checkpoints": 3}
    cfg = tmp_path / "fsdp.yaml"
    cfg.write_text(json.dumps({**config, "fsdp": True}))
    common = ["train", "--tokens", str(tokens), "--config", str(cfg), "--quiet"]
    single = Trainer(tokens, tmp_path / "single", TrainConfig.model_validate(config), progress=False)
    single.fit()
    _launch([*common, "--out", str(tmp_path / "fsdp")], ranks=2)
    l1, lf = losses(tmp_path / "single"), losses(tmp_path / "fsdp")
    assert len(lf) == 6 and lf == pytest.approx(l1, rel=1e-4), (l1, lf)
    w1, o1 = _checkpoint(tmp_path / "single", 6)
    wf, of = _checkpoint(tmp_path / "fsdp", 6)
    assert wf.keys() == w1.keys() and all(torch.allclose(w1[k], wf[k], atol=1e-5) for k in w1)
    assert of.keys() == o1.keys() and all(torch.allclose(o1[k], of[k], atol=1e-5) for k in o1)
    state = json.loads((tmp_path / "fsdp" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["world_size"] == 2 and state["fsdp"] is True

    # killed after step 3, resumed under FSDP: bit-identical weights and optimizer state
    _keep_only(tmp_path / "resumed", tmp_path / "fsdp", 3)
    _launch([*common, "--out", str(tmp_path / "resumed")], ranks=2)
    wr, orr = _checkpoint(tmp_path / "resumed", 6)
    assert all(torch.equal(wf[k], wr[k]) for k in wf) and all(torch.equal(of[k], orr[k]) for k in of)
    assert losses(tmp_path / "resumed") == lf

    # sharded -> one process: the FSDP step-3 checkpoint resumes in one process
    _keep_only(tmp_path / "to_one", tmp_path / "fsdp", 3)
    to_one = Trainer(tokens, tmp_path / "to_one", TrainConfig.model_validate(config), progress=False)
    assert to_one.step == 3
    to_one.fit()
    w, _ = _checkpoint(tmp_path / "to_one", 6)
    assert all(torch.allclose(w1[k], w[k], atol=1e-5) for k in w1)
    # one process -> sharded: the single run's step-3 checkpoint resumes under FSDP
    _keep_only(tmp_path / "to_fsdp", tmp_path / "single", 3)
    _launch([*common, "--out", str(tmp_path / "to_fsdp")], ranks=2)
    w, _ = _checkpoint(tmp_path / "to_fsdp", 6)
    assert all(torch.allclose(w1[k], w[k], atol=1e-5) for k in w1)
    assert losses(tmp_path / "to_fsdp") == pytest.approx(l1, rel=1e-4)


def test_class_weight_balances_the_loss_of_an_imbalanced_stream(tokens, tmp_path):
    torch.manual_seed(0)
    config = TrainConfig.model_validate({**CONFIG, "max_steps": 2, "class_weight": {"tok_demographics": "balanced"}})
    trainer = Trainer(tokens, tmp_path / "run", config, progress=False)
    lay, spec = trainer.model.layout, trainer.specs["tok_demographics"]
    # balanced = n / (k n_c) over the token ids seen in the training rows, counted here independently
    demo = trainer.data.batch(trainer.train_idx)["tok_demographics"]
    n_c = torch.bincount(demo.ids[demo.present].long().flatten(), minlength=spec.vocab_size).double()
    seen = n_c > 0
    expected = torch.ones(spec.vocab_size, dtype=torch.float64)
    expected[seen] = n_c.sum() / (int(seen.sum()) * n_c[seen])
    start = int(lay.vocab_offset[lay.index("tok_demographics")])
    w = trainer.token_weight
    assert torch.allclose(w[start:start + spec.vocab_size].double(), expected, rtol=1e-6)
    assert expected.min() < 0.9 and expected.max() > 1.1  # the stream is imbalanced: the test means something
    others = torch.ones_like(w, dtype=torch.bool)
    others[start:start + spec.vocab_size] = False
    assert torch.equal(w[others], torch.ones(int(others.sum())))  # other streams untouched
    # the weight multiplies each target's cross-entropy; counts stay unweighted
    batch = trainer.data.batch(trainer.train_idx[:32])
    masks = trainer.sampler(trainer.model.presence(batch), trainer.sampler.draw(32, 0))
    trainer.model.eval()
    plain = trainer.model(batch, masks)
    double = trainer.model(batch, masks, token_weight=torch.full_like(w, 2.0))
    assert torch.allclose(double.loss, 2 * plain.loss) and torch.equal(double.count, plain.count)
    s = lay.index("tok_demographics")
    assert plain.count[s] > 0
    drop = trainer.model(batch, masks, token_weight=torch.where(others, 1.0, 0.0))
    rest = torch.arange(len(lay)) != s
    assert drop.loss_sum[s] == 0 and torch.allclose(drop.loss_sum[rest], plain.loss_sum[rest])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.fit() if "loss" in r)
    for bad, message in (({"tok_nope": "balanced"}, "class_weight.tok_nope: no such stream"),
                         ({"tok_demographics": [1.0, 2.0]}, f"expected {spec.vocab_size} weights >= 0")):
        cfg = TrainConfig.model_validate({**CONFIG, "class_weight": bad})
        with pytest.raises(mmtok.MmtokError, match=message):
            Trainer(tokens, tmp_path / "bad", cfg, progress=False)
