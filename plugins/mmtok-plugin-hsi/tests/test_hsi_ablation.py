"""The Houston LiDAR-guidance ablation and the Jasper Ridge held-out-region experiment, in tiny
configurations on the real shipped data: they complete, write their JSON / markdown, split
honestly (disjoint A / B, no shared pixel between regions), and probe HSI-only embeddings."""

import dataclasses
import json

import numpy as np
import torch

from mmtok_plugin_hsi.datasets import load_houston2013, load_jasper_ridge
from mmtok_plugin_hsi.houston import ARMS, houston_model_config, initial_model, presence_flags, run_ablation, split_a_b
from mmtok_plugin_hsi.jasper import SPLIT_COLUMN, linear_inpainting, region_chips, region_tiles, run_jasper

TINY_MODEL = {"dim": 16, "depth": 1, "heads": 2, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
              "conditioner_dim": 16, "conditioner_depth": 1, "embed_dim": 8}


def _houston_subset(per_class: int = 8):
    data = load_houston2013()
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(data.labels == c))[:per_class]
                                   for c in np.unique(data.labels)]))
    return dataclasses.replace(data, hsi=data.hsi[keep], lidar=data.lidar[keep], labels=data.labels[keep])


def _tiny_ablation(out, data, **kw):
    return run_ablation(out, steps=2, seeds=(0,), progress=False, batch_size=8, model=TINY_MODEL, data=data, threads=1,
                        **kw)


def test_split_is_stratified_and_disjoint_and_presence_is_half():
    labels = load_houston2013().labels
    a, b = split_a_b(labels, seed=1)
    assert not np.intersect1d(a, b).size and len(a) + len(b) == len(labels)
    assert np.array_equal(np.bincount(labels[a]), np.bincount(labels) // 2)
    present = presence_flags(len(a), 0.5, seed=1)
    assert present.dtype == torch.bool and int(present.sum()) == round(0.5 * len(a))
    assert not torch.equal(present, presence_flags(len(a), 0.5, seed=2))


def test_every_arm_starts_from_the_same_function():
    cfg = houston_model_config(**TINY_MODEL)
    unguided = initial_model(cfg, seed=3)
    guided = initial_model(cfg.model_copy(update={"auxiliaries": {"elevation_map": 21}}), seed=3)
    shared = unguided.state_dict()
    assert all(torch.equal(v, guided.state_dict()[k]) for k, v in shared.items())
    x = torch.randn(4, 144, 1, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unguided.embed(x), guided.embed(x))


def test_tiny_ablation_writes_every_number_and_probes_hsi_only(tmp_path):
    data = _houston_subset()
    r = _tiny_ablation(tmp_path / "h", data)
    saved = json.loads((tmp_path / "h" / "houston_ablation.json").read_text())
    assert (tmp_path / "h" / "houston_ablation.md").read_text() == r["markdown"] == saved["markdown"]
    assert set(saved["methods"]) == set(ARMS) | {"random_init", "raw_linear", "raw_svm", "raw_hsi_lidar_linear"}
    for row in saved["methods"].values():
        assert {"oa", "aa", "kappa"} <= set(row) and 0 <= row["oa"]["mean"] <= 1
    assert set(saved["paired_vs_unguided"]) == set(ARMS) - {"unguided"}
    assert saved["verdict"].split(":")[0] in {"helps", "hurts", "within noise"}
    seed0 = saved["per_seed"]["0"]
    assert seed0["guided_lidar_50pct"]["present_fraction"] == 0.5 and seed0["guided_lidar"]["present_fraction"] == 1.0
    assert seed0["unguided"]["present_fraction"] is None
    split = saved["splits"]["0"]
    assert not set(split["a"]) & set(split["b"])

    # the probe sees HSI-only embeddings: scrambling the LiDAR of the test pixels B (never used in
    # pretraining) changes no arm's score, only the context row that feeds LiDAR at test time
    b = np.asarray(split["b"])
    scrambled = data.lidar.copy()
    scrambled[b] = np.random.default_rng(0).permutation(scrambled[b].ravel()).reshape(scrambled[b].shape)
    r2 = _tiny_ablation(tmp_path / "h2", dataclasses.replace(data, lidar=scrambled), arms=("guided_lidar",),
                        svm=False)
    again = r2["per_seed"]["0"]
    for key in ("guided_lidar", "random_init", "raw_linear"):
        assert again[key]["per_class"] == r["per_seed"]["0"][key]["per_class"], key
        assert again[key]["oa"] == r["per_seed"]["0"][key]["oa"], key


def test_region_chips_share_no_pixel_across_the_split():
    cube = load_jasper_ridge().cube
    w = cube.shape[2]
    tr_chips, tr_pixels, tr_centres = region_chips(cube, (0, SPLIT_COLUMN))
    te_chips, te_pixels, te_centres = region_chips(cube, (SPLIT_COLUMN, w))
    tiles, tile_pixels = region_tiles(cube, (SPLIT_COLUMN, w))
    assert tr_chips.shape == (5000, 198, 9, 9) and te_centres.size == 5000 and len(tiles) == 55
    assert (tr_pixels % w).max() < SPLIT_COLUMN <= (te_pixels % w).min() and (tile_pixels % w).min() >= SPLIT_COLUMN
    assert not np.intersect1d(tr_pixels, np.concatenate([te_pixels.ravel(), tile_pixels.ravel()])).size
    # the chips hold exactly the pixels their index maps say
    flat = cube.reshape(cube.shape[0], -1)
    i = 1234
    assert np.array_equal(tr_chips[i].reshape(cube.shape[0], -1), flat[:, tr_pixels[i]])
    assert np.array_equal(tr_chips[i][:, 4, 4], flat[:, tr_centres[i]])


def test_linear_inpainting_beats_the_mean_on_real_spectra():
    cube = load_jasper_ridge().cube.astype(np.float64)
    px = cube.reshape(cube.shape[0], -1).T
    mean, cov = px[:5000].mean(0), np.cov(px[:5000], rowvar=False)
    x = cube[:, :9, 50:59][None]
    visible = np.zeros_like(x, dtype=bool)
    visible[:, ::4, :, :5] = True  # every 4th band of the left 5 columns; the right 4 columns see nothing
    filled = linear_inpainting(x, visible, mean, cov)
    assert np.array_equal(filled[visible], x[visible])
    hidden = ~visible
    err = np.sqrt(((filled - x)[hidden] ** 2).mean())
    base = np.sqrt(((mean[None, :, None, None] - x)[hidden] ** 2).mean())
    assert err < 0.5 * base, (err, base)
    assert np.allclose(linear_inpainting(x, np.ones_like(visible), mean, cov), x)


def test_tiny_jasper_run_writes_every_number(tmp_path):
    model = {k: v for k, v in TINY_MODEL.items() if not k.startswith("conditioner") and k != "embed_dim"}
    r = run_jasper(tmp_path / "j", steps=2, rows=9, model=model, codec_steps=2, codec_chips=64, mask_draws=1,
                   progress=False, threads=1)
    saved = json.loads((tmp_path / "j" / "jasper.json").read_text())
    assert (tmp_path / "j" / "jasper.md").read_text() == r["markdown"]
    assert saved["train_columns"] == [0, SPLIT_COLUMN] and saved["test_columns"] == [SPLIT_COLUMN, 100]
    assert set(saved["reconstruction"]) == {"mae", "train_mean_spectrum", "linear_inpainting",
                                            f"pca{saved['k_visible']}_whole_pixel"}
    assert set(saved["abundance_rmse"]) == {"train_mean_abundance", "fcls_shipped_endmembers", "ridge_raw_spectrum", "ridge_mae_embedding",
                                            "ridge_mae_centre_tokens", "ridge_random_init_embedding",
                                            "ridge_random_init_centre_tokens"}
    assert saved["codec_view"]["floats_per_pixel"] == 16
    for row in saved["abundance_rmse"].values():
        assert set(row) == {"overall", "tree", "water", "dirt", "road"} and 0 <= row["overall"] < 1
    assert all(np.isfinite(v["rmse"]) for v in saved["reconstruction"].values())
