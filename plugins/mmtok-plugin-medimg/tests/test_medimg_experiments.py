"""The comparison and the `mmtok medimg` commands run end to end on the real data set (a few
steps: the pipeline, not the quality; the README's numbers come from `mmtok medimg compare`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmtok_plugin_medimg.experiments as experiments
from mmtok_plugin_medimg.datasets import build_dataset
from mmtok_plugin_medimg.modalities import IMAGING_MODALITIES

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "medimg"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mmtok.cli", "medimg", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def data():
    return build_dataset(size=28, channels=1)


def test_comparison_writes_tables_for_every_variant_and_seed(tmp_path, monkeypatch, data):
    monkeypatch.setattr(experiments, "CLASSIFIER_STEPS", 5)
    monkeypatch.setattr(experiments, "SAMPLES_PER_MODALITY", 4)
    monkeypatch.setattr("mmtok_plugin_medimg.datasets.build_dataset", lambda size=64, channels=3: data)
    report = experiments.run_comparison(tmp_path, seeds=[0, 1], steps=3, variants=["baseline", "disentangled"],
                                        batch_size=16, threads=1, size=28)
    assert [len(report["runs"][v]) for v in ("baseline", "disentangled")] == [2, 2]
    run = report["runs"]["disentangled"][0]
    for key in ("modality/silhouette", "shared/silhouette", "modality/separation_ratio_min", "modality/knn_accuracy",
                "recon/mse", "recon/ssim", "generation/accuracy"):
        assert key in run and run[key] == run[key], key  # present, not NaN
    assert "all/silhouette" in report["runs"]["baseline"][0]
    md = (tmp_path / "comparison.md").read_text()
    assert "| baseline |" in md and "| disentangled |" in md and " ± " in md and "| clinical_photo |" in md
    for name in ("latents_pca.png", "latents_tsne.png", "reconstructions.png", "samples_disentangled.png",
                 "swap_disentangled.png", "swap_baseline.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000, name
    again = json.loads((tmp_path / "comparison.json").read_text())
    assert again["summary"]["baseline"]["recon/mse"][0] == pytest.approx(report["summary"]["baseline"]["recon/mse"][0])
    merged = experiments.write_report(tmp_path / "merged", [again])
    assert set(merged["runs"]) == {"baseline", "disentangled"}


def test_model_labels_map_to_the_models_own_indices(data):
    model = experiments.build_variant("disentangled", data)
    present = sorted(set(data.labels.tolist()))
    assert model.config.modalities == [IMAGING_MODALITIES[i] for i in present]
    assert "oct" not in model.config.modalities  # no OCT image exists in the data
    y = experiments.model_labels(model, torch.tensor(present))
    assert y.tolist() == list(range(len(present)))


def test_cli_train_evaluate_sample_classify(tmp_path):
    run = tmp_path / "run"
    out = _cli("train", "--out", str(run), "--steps", "3", "--batch-size", "16", "--size", "28", "--threads", "1",
               cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (run / "model.safetensors").is_file() and (run / "history.json").is_file()
    out = _cli("sample", str(run), "--modality", "xray", "--modality", "pathology", "-n", "3", "--out",
               str(tmp_path / "s.png"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "s.png").stat().st_size > 1000
    out = _cli("classify", "--run", str(run), str(EXAMPLE / "data" / "emri_small.dcm"),
               str(EXAMPLE / "data" / "path_class4.jpeg"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 11 and " frame 9: " in lines[9] and "(file says mr)" in lines[0]
    out = _cli("sample", str(run), "--modality", "oct", "--out", str(tmp_path / "x.png"), cwd=tmp_path)
    assert out.returncode != 0 and "oct" in out.stderr and "Traceback" not in out.stderr
    out = _cli("classify", str(tmp_path / "missing.png"), cwd=tmp_path)
    assert out.returncode != 0 and "missing.png" in out.stderr and "Traceback" not in out.stderr


def test_bundle_example_runs_on_the_shared_transformer(tmp_path):
    """examples/medimg/bundle.py end to end at a few steps: files -> encode -> Trainer -> embeddings
    scored on the held-out sources (the pipeline; the README's numbers are from 400 steps)."""
    out = subprocess.run([sys.executable, str(EXAMPLE / "bundle.py"), "--steps", "4", "--codec-steps", "4",
                          "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "b" / "bundle.json").read_text())
    for view in ("both streams", "patch tokens only", "VAE latent tokens only"):
        assert 0.0 <= result[view]["knn_accuracy"] <= 1.0 and -1.0 <= result[view]["silhouette"] <= 1.0
    assert "| both streams |" in (tmp_path / "b" / "bundle.md").read_text()
