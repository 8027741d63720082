"""One shared transformer over several token folders (`mmtok.mixture`): real example tokens (the
clinic study and the NIR corn spectra), the union of their streams with each sample's own presence,
the seeded mixture schedule, exact resume and torchrun equivalence with two folders, per-folder
held-out metrics, and the refusal of a shared stream from another codec."""

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mmtok
from mmtok.encode import encode_manifest
from mmtok.evaluate import evaluate_run
from mmtok.mixture import MixtureSchedule, TokenFolders
from mmtok.train import TrainConfig, Trainer
import mmtok_plugin_nir  # noqa: F401 - the spectra registry's codecs
import mmtok_plugin_tabular  # noqa: F401 - the clinic registry's codecs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG = {"model": {"d_model": 32, "num_heads": 4, "encoder_depth": 2, "decoder_depth": 1},
          "masking": {"input_budget": 8, "target_budget": 4}, "batch_size": 16, "max_steps": 6,
          "log_every": 1, "eval_every": 3, "checkpoint_every": 3, "eval_batches": 2, "val_fraction": 0.2,
          "optim": {"lr": 3e-3, "warmup_steps": 2}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """clinic (442 patients, 3 table streams) and spectra (80 corn samples, spectrum + properties)."""
    root = tmp_path_factory.mktemp("mix")
    out = {}
    for name in ("clinic", "spectra"):
        out[name] = root / name / "tokens"
        encode_manifest(EXAMPLES / name / "manifest.json", out[name], registry_path=EXAMPLES / name / "registry.yaml",
                        progress=False)
    return out


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_the_union_of_streams_keeps_each_samples_presence_and_unique_ids(folders):
    data = TokenFolders(folders)
    clinic, spectra = mmtok.TokenShards(folders["clinic"]), mmtok.TokenShards(folders["spectra"])
    assert data.keys == sorted([*clinic.streams, *spectra.streams])
    assert len(data) == len(clinic) + len(spectra) and len(set(data.sample_ids)) == len(data)
    assert data.sample_ids[0] == f"clinic:{clinic.sample_ids[0]}" and data.sample_ids[-1] == f"spectra:{spectra.sample_ids[-1]}"
    # a batch mixing both folders, in the caller's order, equals each folder's own rows
    idx = [len(clinic) + 3, 0, len(clinic), 5, 7]
    batch = data.batch(idx)
    own_s, own_c = spectra.batch([3, 0]), clinic.batch([0, 5, 7])
    for key in spectra.streams:
        assert torch.equal(batch[key].present, torch.tensor([True, False, True, False, False]))
        assert torch.equal(batch[key].tokens[[0, 2]], own_s[key].tokens)
    for key in clinic.streams:
        assert not batch[key].present[[0, 2]].any()
        assert torch.equal(batch[key].present[[1, 3, 4]], own_c[key].present)
        assert torch.equal(batch[key].tokens[[1, 3, 4]], own_c[key].tokens)
    assert data.specs() == {**clinic.specs(), **spectra.specs()}


def test_the_mixture_schedule_is_seeded_and_follows_the_shares():
    train = [list(range(0, 400)), list(range(400, 440))]
    seed_of = (lambda e, salt: 1000 * e + salt)
    by_size = MixtureSchedule(train, None, 1.0, seed_of)
    assert by_size.per_epoch == [400, 40]
    flat = MixtureSchedule(train, None, 100.0, seed_of)
    assert abs(flat.shares[0] - 0.5) < 0.02  # high temperature: near uniform over folders
    equal = MixtureSchedule(train, [1.0, 1.0], 1.0, seed_of)
    counts = Counter(i >= 400 for s in range(10) for i in equal.batch(s, 44))
    assert counts[True] == counts[False] == 220  # exactly its share over a whole epoch of 440
    small = Counter(i for s in range(10) for i in equal.batch(s, 44) if i >= 400)
    assert set(small) == set(train[1]) and set(small.values()) == {5, 6}  # 220 draws of 40: whole passes, in turn
    again = MixtureSchedule(train, [1.0, 1.0], 1.0, seed_of)
    assert [again.batch(s, 16) for s in (7, 3, 50)] == [equal.batch(s, 16) for s in (7, 3, 50)]  # pure in the step
    other = MixtureSchedule(train, [1.0, 1.0], 1.0, lambda e, salt: 7 + 1000 * e + salt)
    assert other.batch(0, 16) != equal.batch(0, 16)
    # per-folder batches: each batch from one folder, the folders' steps in their shares, no sample
    # of a folder repeated before all of it has been drawn
    per = MixtureSchedule(train, [3.0, 1.0], 1.0, seed_of, per_folder=True)
    batches = [per.batch(s, 10) for s in range(44)]  # one epoch of ceil(440 / 10) steps: 33 + 11
    assert all(len({i >= 400 for i in b}) == 1 for b in batches)
    small = [b for b in batches if b[0] >= 400]
    assert len(small) == 11
    drawn = [i for b in small for i in b]
    assert sorted(drawn[:40]) == train[1] and sorted(drawn[40:80]) == train[1]
    large = [i for b in batches if b[0] < 400 for i in b]
    assert len(large) == 330 == len(set(large))
    again = MixtureSchedule(train, [3.0, 1.0], 1.0, seed_of, per_folder=True)
    assert [again.batch(s, 10) for s in (50, 3, 44)] == [per.batch(s, 10) for s in (50, 3, 44)]


def test_two_folders_train_resume_exactly_and_report_per_folder(folders, tmp_path):
    config = TrainConfig.model_validate({**CONFIG, "masking": {**CONFIG["masking"], "target_streams": ["tok_nir_properties"]}})
    paths = [folders["clinic"], folders["spectra"]]
    straight = Trainer(paths, tmp_path / "straight", config, progress=False)
    batch_ids = [straight.data.sample_ids[i] for i in straight.global_batch(0)]
    assert {i.split(":")[0] for i in batch_ids} == {"clinic", "spectra"}
    # "predict stream X" still holds in a mixed batch: whoever has tok_nir_properties has all of it as target
    batch = straight.data.batch(straight.global_batch(0))
    present = straight.model.presence(batch)
    masks = straight.sampler(present, straight.sampler.draw(len(batch_ids), 0))
    lay = straight.model.layout
    s = lay.index("tok_nir_properties")
    has = present[:, s]
    targets = ((lay.stream_of[masks.target_idx] == s) & masks.target_valid).sum(1)
    assert has.any() and torch.equal(targets[has], torch.full((int(has.sum()),), straight.specs["tok_nir_properties"].num_tokens))
    assert (targets[~has] == 0).all()
    chosen = lay.stream_of[masks.input_idx][masks.input_valid.bool()]
    rows = masks.input_valid.nonzero()[:, 0]
    assert present[rows, chosen].all()  # inputs only from the streams a sample has

    records = straight.fit()
    resumed = Trainer(paths, tmp_path / "resumed", config, progress=False)
    resumed.fit(max_steps=3)
    resumed = Trainer(paths, tmp_path / "resumed", config, progress=False)
    assert resumed.step == 3
    resumed.fit()
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")

    last = [r for r in records if "val/loss/tok_labs" in r][-1]
    for folder, key in (("clinic", "tok_labs"), ("spectra", "tok_nir_spectrum"), ("spectra", "tok_nir_properties")):
        assert f"val/{folder}/loss/{key}" in last and f"val/{folder}/unigram_loss/{key}" in last
    assert "val/clinic/loss/tok_nir_spectrum" not in last and "val/spectra/loss/tok_labs" not in last
    pooled = last["val/tokens/tok_labs"]
    assert pooled == last["val/clinic/tokens/tok_labs"]
    # the spectra unigram is spectra's own training frequencies: recompute it apart
    spectra_train = straight.schedule.train[1]
    props = straight.data.batch(spectra_train)["tok_nir_properties"]
    expected = torch.bincount(props.ids[props.present].flatten().long(), minlength=props.vocab_size).double()
    assert torch.equal(straight.unigrams[1].counts["tok_nir_properties"], expected)
    assert straight.unigrams[1].counts["tok_labs"].sum() == 0

    # mmtok evaluate on one folder of the mixed run uses that folder's split and baselines
    report = evaluate_run(tmp_path / "straight", folders["spectra"], ["tok_nir_properties"])
    held = sum(1 for i in straight.val_idx if straight.data.folder_of[i] == 1
               and set(straight.data.samples[i]["streams"]) == {"tok_nir_properties", "tok_nir_spectrum"})
    assert report.streams[0].held_out == held > 0


def test_torchrun_two_ranks_match_one_on_two_folders(folders, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({**CONFIG, "tokens": [{"path": str(folders["clinic"]), "weight": 1.0},
                                                    {"path": str(folders["spectra"]), "weight": 1.0}]}))
    base = ["-m", "mmtok.cli", "train", "--config", str(cfg), "--quiet"]
    one = subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *base, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == 6 and l1 == pytest.approx(l2, rel=1e-4), (l1, l2)
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step-000006" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["world_size"] == 2
    saved = mmtok.train.TrainConfig.load(tmp_path / "one" / "config.yaml")
    assert [t.name for t in saved.tokens] == ["clinic", "spectra"]


def test_a_shared_stream_from_another_codec_is_refused_naming_both_folders(folders, tmp_path):
    other = tmp_path / "clinic_v2" / "tokens"
    shutil.copytree(folders["clinic"], other)
    index = json.loads((other / "index.json").read_text())
    index["streams"]["tok_vitals"]["fingerprint"] = "0" * 16  # as a refitted vitals codec would have
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(mmtok.MmtokError) as err:
        TokenFolders({"clinic": folders["clinic"], "clinic_v2": other})
    message = str(err.value)
    assert "\n" not in message and "'tok_vitals'" in message and "fingerprint" in message
    assert "'clinic'" in message and "'clinic_v2'" in message
    # the same folder twice (same codecs) is fine, under two names
    assert len(TokenFolders({"a": folders["clinic"], "b": folders["clinic"]})) == 2 * 442
    r = subprocess.run([sys.executable, "-m", "mmtok.cli", "train", "--tokens", str(folders["clinic"]), "--tokens",
                        str(other), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 1 and "tok_vitals" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mmtok.cli", "train", "--tokens", str(folders["clinic"]), "--tokens",
                        str(folders["clinic"]), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 1 and "both named 'clinic'" in r.stderr


def test_the_joint_versus_separate_example_runs(tmp_path):
    """examples/all/run.py end to end on two shipped bundles, a few steps: every stream of each
    bundle is scored in both arms, with speed and memory rows."""
    r = subprocess.run([sys.executable, str(EXAMPLES / "all" / "run.py"), "--out", str(tmp_path), "--bundles",
                        "clinic", "spectra", "--seeds", "0", "--steps", "3", "--memory-steps", "2", "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for arm in ("separate", "joint", "joint_per_folder"):
        assert set(results[arm]["clinic"][0]) == {"tok_demographics", "tok_vitals", "tok_labs"}
        assert set(results[arm]["spectra"][0]) == {"tok_nir_spectrum", "tok_nir_properties"}
        props = results[arm]["spectra"][0]["tok_nir_properties"]  # decoded to % (4 Corn properties)
        assert len(props["decoded_rmse"]) == len(props["decoded_rmse_majority"]) == 4
        assert all(0 <= v < 10 for v in props["decoded_rmse"] + props["decoded_rmse_majority"])
        for bundle in results[arm].values():
            assert all(0 < s["nll"] < 20 and s["samples"] > 0 for s in bundle[0].values())
    assert results["speed"]["joint"][0]["steps"] == 6 and results["speed"]["joint"][0]["tokens_per_s"] > 0
    assert results["memory"]["all"]["total_vocab"] > results["memory"]["clinic only"]["total_vocab"]
    assert "| clinic | tok_labs |" in r.stdout and "Verdict" in r.stdout
