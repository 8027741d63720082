"""`mmtok evaluate`: held-out samples of the run's own split, metrics recomputed here by hand from
the manifest and the token folder, JSON + Markdown from the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok.cli import main
from mmtok.evaluate import evaluate_run, recorded_manifest
from mmtok.manifest import Manifest
from mmtok.shards import TokenShards, held_out
from mmtok.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
CLINIC = ROOT / "examples" / "clinic"
CONFIG = {"model": {"d_model": 32, "num_heads": 2, "encoder_depth": 1, "decoder_depth": 1},
          "masking": {"input_budget": 5, "target_budget": 3}, "batch_size": 32, "max_steps": 40,
          "val_fraction": 0.2, "eval_every": 1000, "log_every": 20, "checkpoint_every": 40, "seed": 0}


@pytest.fixture(scope="module")
def clinic_run(tmp_path_factory):
    """Quantile codecs fitted on the clinic manifest, its tokens and a small trained run."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("clinic")
    shutil.copytree(CLINIC, root / "clinic", ignore=shutil.ignore_patterns("*.py"))
    work = root / "clinic"
    registry = (work / "registry_model.yaml").read_text().replace("../../runs/clinic/codecs", "codecs")
    (work / "registry_model.yaml").write_text(registry)
    for key, name in (("tok_demographics", "demographics"), ("tok_vitals", "vitals"), ("tok_labs", "labs")):
        assert main(["fit-codec", str(work / "manifest.json"), "--registry", str(work / "registry_model.yaml"),
                     "--stream", key, "--out", str(work / "codecs" / name), "--quiet"]) == 0
    tokens, run = root / "tokens", root / "run"
    assert main(["encode", str(work / "manifest.json"), "--registry", str(work / "registry_model.yaml"),
                 "--out", str(tokens), "--quiet"]) == 0
    Trainer(tokens, run, TrainConfig.model_validate(CONFIG), progress=False).fit()
    return work, tokens, run


def test_the_token_folder_records_its_manifest(clinic_run):
    work, tokens, _ = clinic_run
    assert recorded_manifest(tokens).resolve() == (work / "manifest.json").resolve()


def test_metrics_match_a_hand_computation_on_the_runs_held_out_split(clinic_run):
    work, tokens, run = clinic_run
    report = evaluate_run(run, tokens, ["tok_labs"])  # registry and manifest: the folder's own
    ev = report.streams[0]
    data = TokenShards(tokens)
    has = [i for i, s in enumerate(data.samples) if "tok_labs" in s["streams"]]
    test = [i for i in has if held_out(data.sample_ids[i], 0.2) and len(data.samples[i]["streams"]) > 1]
    train = [i for i in has if not held_out(data.sample_ids[i], 0.2)]
    assert (ev.held_out, ev.train, ev.tokens) == (len(test), len(train), 6 * len(test))
    # majority and unigram, by hand, per token position
    y, y_train = data.batch(test)["tok_labs"].ids.numpy(), data.batch(train)["tok_labs"].ids.numpy()
    counts = np.stack([np.bincount(y_train[:, j], minlength=16) for j in range(6)])
    majority = counts.argmax(1)
    assert ev.classification["majority"]["accuracy"] == pytest.approx((y == majority).mean())
    p = (counts + 1) / (counts.sum(1, keepdims=True) + 16)
    p_true = p[np.arange(6), y]
    assert ev.classification["unigram"]["log_loss"] == pytest.approx(-np.log(p_true).mean())
    recall = ev.classification["model"]["per_class_recall"]
    assert ev.classification["model"]["balanced_accuracy"] == pytest.approx(np.mean(list(recall.values())))
    assert set(recall) == set(np.unique(y).tolist()) and sum(ev.support.values()) == y.size
    # the training-mean baseline in data units, from the manifest's own values
    manifest, manager = Manifest.load(work / "manifest.json"), mmtok.get_plugin_manager()
    by_id = {s.id: s for s in manifest.samples}
    values = lambda idx: np.concatenate([manifest.load_modality(by_id[data.sample_ids[i]], "lab_results",
                                                                manager).values.numpy() for i in idx])
    truth, reference = values(test), values(train)
    rmse = np.sqrt(((truth - reference.mean(0)) ** 2).mean())
    assert ev.regression["training mean"]["rmse"] == pytest.approx(rmse, rel=1e-5)
    assert set(ev.regression) == {"model (posterior mean)", "model (MaskGIT decode)", "training mean"}


def test_cli_writes_json_and_markdown(clinic_run, tmp_path, capsys):
    _, tokens, run = clinic_run
    out = tmp_path / "report.json"
    assert main(["evaluate", str(run), "--tokens", str(tokens), "--stream", "tok_vitals", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| majority |" in printed and "balanced accuracy" in printed and "training mean" in printed
    report = json.loads(out.read_text())
    assert [s["stream"] for s in report["streams"]] == ["tok_vitals"]
    assert out.with_suffix(".md").read_text().startswith("### tok_vitals")


def test_bad_requests_get_clear_errors(clinic_run, tmp_path, capsys):
    _, tokens, run = clinic_run
    assert main(["evaluate", str(run), "--tokens", str(tokens), "--stream", "tok_nope", "--quiet"]) == 1
    assert "not 'tok_nope'" in capsys.readouterr().err
    shutil.copytree(run, tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("val_fraction: 0.0\n")
    assert main(["evaluate", str(tmp_path / "run"), "--tokens", str(tokens), "--quiet"]) == 1
    assert "holds out no sample" in capsys.readouterr().err


def test_token_dataset_batches_like_token_shards(clinic_run):
    _, tokens, _ = clinic_run
    data = mmtok.TokenDataset(tokens)
    shards = TokenShards(tokens)
    assert len(data) == len(shards) and data.sample_ids == shards.sample_ids
    batches = list(data.loader(batch_size=100))
    assert [b.batch_size for b in batches] == [100, 100, 100, 100, 42]
    first = shards.batch(range(100))
    assert all(torch.equal(batches[0][k].ids, first[k].ids) and torch.equal(batches[0][k].present, first[k].present)
               for k in first)
    assert data[3]["tok_labs"].ids.shape == (1, 6)
