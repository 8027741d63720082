"""The experiment tools: `mmtok hsi pretrain` / `probe` end to end on a real crop of Indian Pines
(rows 0-39, cols 0-55: 1402 labelled pixels, 8 classes) written as .npz and as .mat, their
one-line errors, the fine-tune, the figures, and the Indian Pines protocol helpers. A tiny model
(96 bands, 3 x 3 px chips, width 32, one block) and a few steps: these test the plumbing; the
real numbers come from `mmtok hsi indian-pines`."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

from mmtok_plugin_hsi import cli
from mmtok_plugin_hsi.datasets import load_indian_pines

ROWS, COLS = slice(0, 40), slice(0, 56)
TINY = ["--dim", "32", "--depth", "1", "--heads", "4", "--steps", "3", "--batch-size", "16", "--max-chips", "200",
        "--chip", "3", "--bands", "96"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a busy machine two
    threads made a training step 25x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hsi(argv: list[str]) -> int:
    """``mmtok hsi ARGV`` in-process: through the core CLI once the plugin registers the command,
    else through the plugin's own parser (same `configure`, same one-line errors)."""
    import mmtok.cli
    from mmtok import get_plugin_manager

    if "hsi" in {c.name for c in get_plugin_manager().commands()}:
        return mmtok.cli.main(["hsi", *argv])
    return cli.main(argv)


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """The crop as cube / label files in both formats, and a tiny pretraining run on the .npz."""
    scene = load_indian_pines()
    d = tmp_path_factory.mktemp("ip_crop")
    cube = scene.cube[:, ROWS, COLS]
    gt = scene.labels[ROWS, COLS]
    np.savez(d / "cube.npz", reflectance=cube, wavelength_nm=scene.wavelength_nm)
    scipy.io.savemat(d / "cube.mat", {"indian_pines": np.moveaxis(cube, 0, -1), "wavelength_nm": scene.wavelength_nm})
    np.savez(d / "labels.npz", gt=gt.astype(np.int16))
    scipy.io.savemat(d / "labels.mat", {"indian_pines_gt": gt.astype(np.uint8)})
    sparse = np.where(np.random.default_rng(0).random(gt.shape) < 0.35, gt, 0)  # a third of the labels: a cheap SVM
    np.savez(d / "sparse_labels.npz", gt=sparse.astype(np.int16))
    assert cli.main(["pretrain", "--cube", str(d / "cube.npz"), "--out", str(d / "run"), "--quiet", "--threads", "1",
                     *TINY]) == 0
    return d


@pytest.mark.parametrize("fmt, split, labels", [("npz", "random", "labels.npz"), ("npz", "spatial", "sparse_labels.npz")])
def test_probe_end_to_end(crop, fmt, split, labels, capsys):
    rc = _hsi(["probe", str(crop / "run"), "--cube", str(crop / f"cube.{fmt}"), "--labels", str(crop / labels),
               "--split", split, "--quiet", "--json", str(crop / f"{fmt}_{split}.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| linear probe") or line.startswith("| SVM")]
    assert len(rows) == 2
    for row in rows:
        oa, aa, kappa = (float(v) for v in row.strip("|").split("|")[1:])
        assert 0 <= oa <= 100 and 0 <= aa <= 100 and -1 <= kappa <= 1
    import json
    scores = json.loads((crop / f"{fmt}_{split}.json").read_text())
    assert scores["n_train"] > 0 and scores["n_test"] > 0
    if split == "random":  # the raw-spectrum SVM on real Indian Pines pixels: far above chance (8 classes)
        assert scores["results"]["SVM (RBF) on the raw spectra (200 bands)"]["oa"] > 0.5


def _error(capsys, argv) -> str:
    assert _hsi(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_probe_errors(crop, tmp_path, capsys):
    run, cube = str(crop / "run"), str(crop / "cube.npz")
    gt = np.load(crop / "labels.npz")["gt"]
    np.save(tmp_path / "short.npy", gt[:30])
    assert "30 x 56 px, the cube 40 x 56 px" in _error(capsys, ["probe", run, "--cube", cube, "--labels",
                                                                 str(tmp_path / "short.npy")])
    np.save(tmp_path / "none.npy", np.zeros_like(gt))
    assert "no labelled pixel" in _error(capsys, ["probe", run, "--cube", cube, "--labels", str(tmp_path / "none.npy")])
    lonely = gt.copy()
    lonely[0, 0] = 17
    np.save(tmp_path / "lonely.npy", lonely)
    assert "class 17 has 1 labelled pixel" in _error(capsys, ["probe", run, "--cube", cube, "--labels",
                                                               str(tmp_path / "lonely.npy")])
    np.savez(tmp_path / "two.npz", a=gt, b=gt)
    assert "--labels-key" in _error(capsys, ["probe", run, "--cube", cube, "--labels", str(tmp_path / "two.npz")])
    assert "not found" in _error(capsys, ["probe", run, "--cube", cube, "--labels", str(tmp_path / "two.npz"),
                                          "--labels-key", "c"])
    assert "not an `mmtok hsi pretrain` run" in _error(capsys, ["probe", str(tmp_path), "--cube", cube, "--labels",
                                                                 str(crop / "labels.npz")])


def test_pretrain_errors(crop, tmp_path, capsys):
    np.savez(tmp_path / "image.npz", reflectance=np.ones((40, 72), np.float32))
    assert "HSICube" in _error(capsys, ["pretrain", "--cube", str(tmp_path / "image.npz"), "--out", str(tmp_path / "r")])
    scene = load_indian_pines()
    vnir = scene.wavelength_nm < 1000
    np.savez(tmp_path / "vnir.npz", reflectance=scene.cube[vnir][:, :20, :20], wavelength_nm=scene.wavelength_nm[vnir])
    assert "--grid-nm" in _error(capsys, ["pretrain", "--cube", str(tmp_path / "vnir.npz"), "--out", str(tmp_path / "r")])


def test_pretrain_run_is_loadable(crop):
    from mmtok_plugin_hsi.pretrain import load_run

    model, norm, record = load_run(crop / "run")
    assert record["grid_nm"] == [400.0, 2500.0, 96] and record["chip"] == 3
    assert record["pretraining_chips"] == 200 and model.config.dim == 32
    assert norm.mean.shape == (96,)


def test_finetune_shape_and_caller_model_untouched():
    from mmtok_plugin_hsi.model import GuidedSpectralGPT, GuidedSpectralGPTConfig
    from mmtok_plugin_hsi.probe import finetune

    g = torch.Generator().manual_seed(0)
    model = GuidedSpectralGPT(GuidedSpectralGPTConfig(bands=24, size=3, dim=16, depth=1, heads=2, decoder_dim=8,
                                                      decoder_heads=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_train, x_test = torch.randn(20, 24, 3, 3, generator=g), torch.randn(7, 24, 3, 3, generator=g)
    y_train = np.arange(20) % 3
    pred = finetune(model, None, x_train, y_train, x_test, 3, steps=4, seed=0)
    assert pred.shape == (7,) and pred.dtype == np.int64 and set(pred.tolist()) <= {0, 1, 2}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert np.array_equal(pred, finetune(model, None, x_train, y_train, x_test, 3, steps=4, seed=0))
    lpft = finetune(model, None, x_train, y_train, x_test, 3, steps=4, seed=0, head_init="probe")
    assert lpft.shape == (7,)


def test_finetune_starts_from_the_linear_probe():
    """LP-FT: with no step the fine-tuned classifier is the linear probe (standardisation folded
    into the head), on real Indian Pines chips and a class the probe never saw (label 5 of 6)."""
    from mmtok_plugin_hsi.chips import extract_chips
    from mmtok_plugin_hsi.model import GuidedSpectralGPT, GuidedSpectralGPTConfig
    from mmtok_plugin_hsi.pretrain import CubeNorm
    from mmtok_plugin_hsi.probe import embed_chips, finetune, linear_probe

    scene = load_indian_pines()
    flat = np.flatnonzero(np.isin(scene.labels.ravel(), (2, 3, 11)))[::20]  # 3 classes, 100+ pixels
    w = scene.shape[1]
    chips = extract_chips(scene.cube[:192], flat // w, flat % w, 3)
    y = np.searchsorted([2, 3, 11], scene.labels.ravel()[flat])
    model = GuidedSpectralGPT(GuidedSpectralGPTConfig(bands=192, size=3, dim=16, depth=1, heads=2, decoder_dim=8,
                                                      decoder_heads=2)).eval()
    norm = CubeNorm.fit(torch.from_numpy(chips))
    feats = embed_chips(model, chips, norm)
    probe = linear_probe(feats[::2], y[::2], feats[1::2], seed=0)
    lpft = finetune(model, norm, chips[::2], y[::2], chips[1::2], 6, steps=0, seed=0, head_init="probe")
    assert np.mean(lpft == probe) > 0.98  # float32 vs float64 logits may flip a near-tie


def test_figures_write_pngs(tmp_path):
    from mmtok_plugin_hsi.figures import plot_class_map, plot_embedding, plot_reconstruction, rgb_composite

    scene = load_indian_pines()
    cube = scene.cube[:, :27, :27]
    rgb = rgb_composite(cube, scene.wavelength_nm)
    assert rgb.shape == (27, 27, 3) and 0 <= rgb.min() and rgb.max() <= 1
    rng = np.random.default_rng(0)
    paths = [
        plot_reconstruction(cube, cube + 0.01 * rng.standard_normal(cube.shape), scene.wavelength_nm,
                            tmp_path / "rec.png", mask=rng.random((27, 27)) < 0.9),
        plot_class_map(scene.labels[:27, :27], scene.labels[:27, :27], scene.class_names, tmp_path / "map.png",
                       region_map=(rng.random((27, 27)) * 3).astype(int)),
        plot_embedding(rng.standard_normal((60, 8)), rng.integers(1, 17, 60), scene.class_names, tmp_path / "emb.png"),
    ]
    for p in paths:
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"


def test_pretraining_centres_share_no_pixel_with_test_chips():
    from mmtok_plugin_hsi.indian_pines import pretraining_centres
    from mmtok_plugin_hsi.splits import spatially_disjoint

    labels = load_indian_pines().labels[:72, :96]
    split = spatially_disjoint(labels, chip_size=9, seed=0, trials=2)
    centres = pretraining_centres(labels.shape, 9, split.region_map, split.test_idx)
    w = labels.shape[1]
    assert len(centres) > 100 and np.all(split.region_map.ravel()[centres] == 1)
    cr, cc = centres // w, centres % w
    tr, tc = split.test_idx // w, split.test_idx % w
    cheb = np.maximum(np.abs(cr[:, None] - tr[None, :]), np.abs(cc[:, None] - tc[None, :]))
    assert cheb.min() >= 9  # 9 x 9 chips centred 9 px apart share no pixel
    assert len(pretraining_centres(labels.shape, 9)) == labels.size


def test_mmtok_hsi_probe_in_a_subprocess(crop):
    """The installed command end to end: `python -m mmtok.cli hsi probe` (the core CLI, the plugin's
    `mmtok_commands` hook)."""
    from mmtok import get_plugin_manager

    assert "hsi" in {c.name for c in get_plugin_manager().commands()}
    out = subprocess.run([sys.executable, "-m", "mmtok.cli", "hsi", "probe", str(crop / "run"), "--cube",
                          str(crop / "cube.mat"), "--labels", str(crop / "labels.mat"), "--quiet", "--threads", "1",
                          "--json", str(crop / "mat_random.json")], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "| linear probe on the run's HSI-only embeddings |" in out.stdout
    assert "| SVM (RBF) on the raw spectra (200 bands) |" in out.stdout
    if not (crop / "npz_random.json").is_file():  # this test run alone
        assert _hsi(["probe", str(crop / "run"), "--cube", str(crop / "cube.npz"), "--labels",
                     str(crop / "labels.npz"), "--quiet", "--json", str(crop / "npz_random.json")]) == 0
    import json
    # the same crop as .mat (h, w, bands) and as .npz (bands, h, w): the same scores
    assert json.loads((crop / "mat_random.json").read_text())["results"] == \
        json.loads((crop / "npz_random.json").read_text())["results"]


def test_cli_module_imports_nothing_heavy_at_load():
    """`mmtok --help` stays fast: cli.py imports only the standard library and mmtok at module level
    (each subcommand imports its modules when it runs)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cli))
    top = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
           for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert top <= {"argparse", "sys", "pathlib", "mmtok"}, top
    import argparse
    parser = argparse.ArgumentParser(prog="mmtok hsi")
    cli.configure(parser)
    help_text = parser.format_help()
    for name in ("pretrain", "probe", "indian-pines", "ablation", "jasper", "baselines"):
        assert name in help_text


def test_experiment_subcommands_pass_only_the_given_options(tmp_path, monkeypatch, capsys):
    import mmtok_plugin_hsi.houston as houston
    import mmtok_plugin_hsi.jasper as jasper

    calls = []
    fake = lambda name: lambda out, **kw: calls.append((name, out, kw)) or {"markdown": f"| {name} table |"}
    monkeypatch.setattr(houston, "run_ablation", fake("ablation"))
    monkeypatch.setattr(jasper, "run_jasper", fake("jasper"))
    assert _hsi(["ablation", "--out", str(tmp_path), "--steps", "5", "--seeds", "0,1", "--quiet"]) == 0
    assert _hsi(["jasper", "--out", str(tmp_path)]) == 0
    assert calls == [("ablation", tmp_path, {"progress": False, "steps": 5, "seeds": (0, 1)}),
                     ("jasper", tmp_path, {"progress": True})]
    out = capsys.readouterr().out
    assert "| ablation table |" in out and "| jasper table |" in out
