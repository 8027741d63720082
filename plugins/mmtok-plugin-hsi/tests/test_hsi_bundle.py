"""examples/hsi/bundle.py: the hsi-guided bundle on mmtok's shared transformer, end to end on a
stratified 120 of the real Houston 2013 pixels (a few steps: the pipeline, not the numbers)."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtok import MmtokError, TokenShards
from mmtok_plugin_hsi.datasets import load_houston2013
from mmtok_plugin_hsi.houston import split_a_b

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "hsi"
ARMS = {"guided-half", "masked-half", "masked-none"}


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"hsi_example_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_runs_every_arm_and_hsi_only_embeddings_ignore_lidar(tmp_path):
    """bundle.json has OA / AA / kappa per arm and embedding on the ablation's A/B split; a B
    pixel's HSI-only embeddings (head and pooled) are unchanged when its elevation tokens are
    scrambled, marked absent or removed, and do change with its cube tokens."""
    bundle = _example("bundle")
    result = bundle.main(["--out", str(tmp_path), "--limit", "120", "--codec-steps", "3", "--steps", "3",
                          "--seeds", "0", "--lidar", "half", "--no-raw"])
    saved = json.loads((tmp_path / "bundle.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert set(saved["summary"]) == ARMS
    for arm, kinds in saved["summary"].items():
        want = {"head", "pooled"} if arm.startswith("guided") else {"pooled"}
        assert set(kinds) == want, arm
        for r in kinds.values():
            assert all(0.0 <= r[m]["mean"] <= 1.0 for m in ("oa", "aa")) and -1.0 <= r["kappa"]["mean"] <= 1.0
            assert ("oa_minus_head_removed" in r) == arm.startswith("guided")
    report = (tmp_path / "bundle.md").read_text()
    assert "| MM only, cube stream alone (no LiDAR) | pooled HSI-only features |" in report
    assert "Wall seconds per seed (mean): codecs" in report

    seed = saved["per_seed"][0]
    labels = load_houston2013().labels
    rows = bundle.subsample(labels, 120)
    a, b = split_a_b(labels[rows], 0)
    assert (seed["A"], seed["B"], seed["A_with_lidar_half"]) == (len(a), len(b), len(a) // 2) == (60, 60, 30)
    folder = tmp_path / "seed0"
    train_ids = TokenShards(folder / "tokens_A-all").sample_ids
    test_ids = TokenShards(folder / "tokens_B").sample_ids
    assert sorted(train_ids) == [bundle.sample_id(r) for r in rows[a]]
    assert sorted(test_ids) == [bundle.sample_id(r) for r in rows[b]] and not set(train_ids) & set(test_ids)
    half = TokenShards(folder / "tokens_A-half", ["tok_elevation_map"])
    assert len(half) == 30  # only the LiDAR-present half of A has the elevation stream

    trainer = bundle.load_arm(folder / "guided-half", folder / "tokens_A-half")
    assert trainer.step == 3 and "hsi-guidance" in trainer.module.heads
    shards = TokenShards(folder / "tokens_B")
    batch = shards.batch(range(len(shards)))
    lidar = batch["tok_elevation_map"]
    assert bool(lidar.present.all())
    g = torch.Generator().manual_seed(0)
    scrambled = dataclasses.replace(lidar, ids=torch.randint(lidar.vocab_size, lidar.ids.shape, generator=g))
    assert not torch.equal(scrambled.ids, lidar.ids)
    base = bundle.hsi_only_embeddings(trainer, batch)
    assert set(base) == {"head", "pooled"} and base["head"].shape == (60, 64) and base["pooled"].shape == (60, 64)
    for other in (batch.replace(tok_elevation_map=scrambled),
                  batch.replace(tok_elevation_map=dataclasses.replace(lidar, present=torch.zeros(60, dtype=bool))),
                  batch.without(["tok_elevation_map"])):
        e = bundle.hsi_only_embeddings(trainer, other)
        for kind in base:
            assert torch.equal(e[kind], base[kind]), kind
    cube = batch["tok_hsi_cube"]
    shifted = batch.replace(tok_hsi_cube=dataclasses.replace(cube, ids=(cube.ids + 1) % cube.vocab_size))
    moved = bundle.hsi_only_embeddings(trainer, shifted)
    assert all(not torch.allclose(moved[k], base[k]) for k in base)  # the check above is not vacuous
    assert all(v == 0.0 for v in seed["results"]["guided-half"]["invariance"].values())
    ids, emb = bundle.embed_split(trainer, folder / "tokens_B", batch_size=16)  # batching changes nothing
    assert ids == test_ids and np.allclose(emb["head"], base["head"].numpy(), atol=1e-5)


def test_bundle_refuses_an_unknown_lidar_setting(tmp_path):
    with pytest.raises(MmtokError, match="--lidar: expected a comma list of"):
        _example("bundle").main(["--out", str(tmp_path), "--lidar", "some"])
