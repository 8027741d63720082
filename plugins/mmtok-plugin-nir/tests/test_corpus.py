"""The pretraining corpus (real shipped spectra: counts, axes, cleaning, test rows left out), the
embedding's no-axis path, the VIB-collapse switches and resumable pretraining on the full corpus."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mmtok_plugin_nir.pretrain as pretrain_module
from mmtok.cli import main as mmtok_main
from mmtok_plugin_nir.corpus import (CORPUS, SPECTRA_MORE, CorpusError, CorpusPart, check_batch, check_corpus,
                                     clean_fermentation, corpus_markdown, corpus_table, load_source,
                                     pretraining_corpus)
from mmtok_plugin_nir.datasets import load_dataset
from mmtok_plugin_nir.model.embedding import WaveletEmbedding
from mmtok_plugin_nir.model.heads import VIBHead
from mmtok_plugin_nir.model.losses import kl_loss, kl_per_dim
from mmtok_plugin_nir.pretrain import PretrainConfig, pretrain, source_weights, vib_weight_at
from mmtok_plugin_nir.protocol import calibration_split

TINY = {"n_points": 256, "patch_size": 32, "d_model": 32, "n_mamba_layers": 2, "d_state": 4, "expand": 1,
        "n_heads": 2, "z_chem": 16, "z_inst": 8, "fno_modes": 8, "fno_width": 8, "wavelet_levels": 2}
STAGED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "spectra_more"
# spectra per source that pretraining draws from (Corn: 60 pool samples x 3 instruments; Tablet:
# Train + Validate 195 x 2; fermentation: 1629 - 3 constant rows, every 2nd of the 1626 kept)
COUNTS = {"corn": 180, "tablet": 390, "fruit": 1096, "octane": 39, "tecator": 215, "gasoline": 60,
          "mayonnaise": 162, "yarn": 28, "fermentation": 813, "coffee": 60, "collagen": 731}


@pytest.fixture(scope="module")
def parts():
    return {p.name: p for p in pretraining_corpus(n_points=TINY["n_points"])}


def test_corpus_counts_domains_and_table(parts):
    assert list(parts) == list(CORPUS)
    table = corpus_table()
    assert {r["source"]: r["n"] for r in table} == COUNTS
    assert {n: int(p.spectra.shape[0]) for n, p in parts.items()} == COUNTS
    # the 4,020 staged spectra_more rows, minus 3 constant rows and the 813 thinned fermentation rows
    assert sum(COUNTS[s] for s in SPECTRA_MORE) == 4020 - 3 - 813
    assert {n: p.domain for n, p in parts.items() if p.domain == "IR"}.keys() == {"fermentation", "coffee", "collagen"}
    assert all(parts[n].domain == "NIR" for n in ("corn", "tablet", "fruit", "octane", "tecator", "gasoline",
                                                   "mayonnaise", "yarn"))
    # instrument ids: one per (source, instrument), global
    ids = [p.instrument.unique().tolist() for p in parts.values()]
    assert ids[:2] == [[0, 1, 2], [3, 4]] and sum(ids, []) == list(range(14))
    text = corpus_markdown(table)
    assert "**Total: 3774 spectra** (NIR 2170, IR 1604); 1184 of them without a wavelength axis." in text
    assert "GPL-2" in text and "MIT" in text and "GPL-3.0-or-later" in text
    assert all(torch.isfinite(p.spectra).all() and p.spectra.shape[1] == 256 for p in parts.values())
    # size-proportional sampling, or tempered
    w1, w05 = source_weights(list(parts.values())), source_weights(list(parts.values()), 0.5)
    assert w1[2] == pytest.approx(1096 / 3774) and w05[2] < w1[2] and w05[7] > w1[7]


def test_axes_increasing_and_no_axis_sources_flagged(parts):
    for name in CORPUS:
        src = load_source(name)
        if src.axis_kind == "none":
            assert src.wavelength_nm is None and not parts[name].axis_known and parts[name].wavelength_nm is None
            assert name in ("fruit", "yarn", "coffee")
            continue
        assert parts[name].axis_known and bool((parts[name].wavelength_nm.diff() > 0).all()), name
        assert np.all(np.diff(src.wavelength_nm) > 0), name
    # wavenumbers -> nm, flipped together with the values where needed
    ferm, coll = load_source("fermentation"), load_source("collagen")
    with np.load(Path(pretrain_module.__file__).parent / "data" / "corpus_fermentation.npz") as d:
        wn, x = d["wavenumber_cm1"], d["X"]
    assert wn[0] < wn[-1]                                      # stored ascending in cm-1 ...
    np.testing.assert_allclose(ferm.wavelength_nm, (1e7 / wn)[::-1])   # ... so flipped in nm
    np.testing.assert_array_equal(ferm.spectra["fermentation"][:, 0], x[:, -1])
    assert coll.native_axis[0] > coll.native_axis[-1]          # collagen descending in cm-1: already increasing in nm
    np.testing.assert_allclose(coll.wavelength_nm, 1e7 / coll.native_axis)
    assert load_source("tecator").axis_kind == "wavelength_nm_approx"


def test_fermentation_cleaned_and_shipped_files_plain():
    data = Path(pretrain_module.__file__).parent / "data"
    with np.load(data / "corpus_fermentation.npz", allow_pickle=False) as d:
        x, wn, rows = d["X"], d["wavenumber_cm1"], d["rows"]
        assert x.dtype == np.float32 and x.shape == (813, 694)
        assert wn.min() >= 900 and not np.isin(wn, (1794.0, 1796.0)).any()
        assert np.abs(x).max() < 11 and (np.ptp(x, axis=1) > 0).all()
        np.testing.assert_array_equal(rows, np.arange(0, 1626, 2))
    with np.load(data / "corpus_tecator.npz", allow_pickle=False) as d:
        assert "Tecator" in str(d["permission_note"]) and "GPL" in str(d["licence"])
    total = sum((data / s.file).stat().st_size for s in SPECTRA_MORE.values())
    assert total < 4.0e6
    if not (STAGED / "chemotools_fermentation.npz").exists():
        pytest.skip("staged spectra_more not present")
    with np.load(STAGED / "chemotools_fermentation.npz") as d:
        raw, raw_wn = d["X"], d["wavenumber_cm1"]
    cleaned, kept, channels = clean_fermentation(raw, raw_wn)
    assert kept.tolist() == list(range(1626)) and channels.sum() == 694 and np.abs(cleaned).max() < 11
    assert np.abs(raw[:1626][:, ~channels]).max() > 1000          # what was cut is the saturation
    np.testing.assert_array_equal(x, cleaned[::2].astype(np.float32))


def test_corn_and_tablet_parts_leave_out_every_test_row():
    for name in ("corn", "tablet"):
        data, src = load_dataset(name), load_source(name)
        pool, test = calibration_split(data)
        for inst in data.instruments:
            seen = src.spectra[inst]
            test_x = data.instrument(inst)[test]
            assert not (test_x[:, None, :] == seen[None]).all(-1).any(), f"{name} {inst}: a test row"
            expected = np.flatnonzero(data.split != "Test") if data.split is not None else pool
            np.testing.assert_array_equal(seen, data.instrument(inst)[expected])
    assert load_source("corn", exclude_test=False).spectra["m5"].shape == (80, 700)


def test_bad_corpus_input_is_a_clear_error(parts, tmp_path, capsys):
    with pytest.raises(CorpusError, match="unknown corpus source 'foo'; available: .*'fermentation'"):
        load_source("foo")
    unlabelled = CorpusPart("mine", parts["corn"].spectra, parts["corn"].wavelength_nm, parts["corn"].instrument,
                            domain=None)
    with pytest.raises(CorpusError, match=r"part 'mine': no domain label.*\['IR', 'NIR'\]"):
        check_corpus([parts["fermentation"], parts["fruit"], unlabelled])
    with pytest.raises(CorpusError, match="domain 'FTIR' is not one of"):
        check_corpus([CorpusPart("x", parts["corn"].spectra, parts["corn"].wavelength_nm, parts["corn"].instrument,
                                 domain="FTIR")])
    batch = {"clean": torch.zeros(4, 256), "wavelength_nm": torch.linspace(1000, 2000, 256)}
    with pytest.raises(CorpusError, match=r"no 'domain' labels; expected a \(b,\) = \(4,\) tensor"):
        check_batch(batch)
    with pytest.raises(CorpusError, match=r"sample\(s\) \[2\]: expected ids 0..2"):
        check_batch({**batch, "domain": torch.tensor([0, 1, 5, 0])})
    with pytest.raises(CorpusError, match="no 'wavelength_nm'"):
        check_batch({"clean": torch.zeros(2, 256), "domain": torch.zeros(2, dtype=torch.long), "wavelength_nm": None})
    assert mmtok_main(["nir", "pretrain", "--out", str(tmp_path), "--datasets", "corn,foo", "--quiet"]) == 2
    assert "unknown corpus source 'foo'" in capsys.readouterr().err


def test_embedding_no_axis_path():
    torch.manual_seed(0)
    emb = WaveletEmbedding(d_model=16, patch_size=16, levels=2)
    x, wl, dom = torch.randn(3, 128), torch.linspace(1100, 2500, 128), torch.zeros(3, dtype=torch.long)
    known = emb(x, wl, dom)
    torch.testing.assert_close(emb(x, wl, dom, axis_known=torch.ones(3, dtype=torch.bool)), known)
    none = emb(x, None, dom, axis_known=torch.zeros(3, dtype=torch.bool))
    assert none.shape == known.shape and not torch.allclose(none[:, 2:], known[:, 2:])
    torch.testing.assert_close(none[:, :2], known[:, :2])               # CLS / DOMAIN unchanged
    # the no-axis code does not depend on any wavelength: a nonsense row (NaN) is never read
    flags = torch.tensor([True, False, True])
    bad_wl = wl.expand(3, -1).clone()
    bad_wl[1] = float("nan")
    mixed = emb(x, bad_wl, dom, axis_known=flags)
    torch.testing.assert_close(mixed[flags], known[flags])
    torch.testing.assert_close(mixed[1], none[1])
    mixed.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in emb.parameters() if p.grad is not None)
    assert emb.rel_pos.weight.grad.abs().sum() > 0 and emb.pos.weight.grad.abs().sum() > 0
    emb.zero_grad()
    emb(x, None, dom, axis_known=torch.zeros(3, dtype=torch.bool)).sum().backward()
    assert emb.pos.weight.grad is None or emb.pos.weight.grad.abs().sum() == 0   # the wavenumber code is unused
    with pytest.raises(ValueError, match="wavelength_nm is None but axis_known is not given"):
        emb(x, None, dom)
    with pytest.raises(ValueError, match=r"sample\(s\) \[0, 2\] are flagged axis_known"):
        emb(x, None, dom, axis_known=flags)


def test_vib_switches_change_the_kl_as_intended():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(8, 6, generator=g) * torch.tensor([1.0, 1.0, 1.0, 0.01, 0.01, 0.01])
    logvar = torch.zeros(8, 6)
    plain = kl_loss(mu, logvar)
    torch.testing.assert_close(kl_per_dim(mu, logvar).sum(), plain)
    assert kl_loss(mu, logvar, free_bits=0.0) == plain
    floored = kl_loss(mu, logvar, free_bits=0.1)
    per_dim = kl_per_dim(mu, logvar)
    torch.testing.assert_close(floored, per_dim.clamp(min=0.1).sum())
    assert floored > plain and bool((per_dim[3:] < 0.1).all()) and bool((per_dim[:3] > 0.1).all())
    # dimensions below the floor get no KL gradient, the others the plain one
    mu.requires_grad_(True)
    kl_loss(mu, logvar, free_bits=0.1).backward()
    assert float(mu.grad[:, 3:].abs().sum()) == 0.0 and float(mu.grad[:, :3].abs().sum()) > 0
    with pytest.raises(ValueError, match="free_bits must be >= 0"):
        kl_loss(mu, logvar, free_bits=-1.0)
    head = VIBHead(16, z_chem=4, z_inst=2)
    cls = torch.randn(5, 16, generator=g)
    out = head(cls)
    assert out.kl == out.kl_raw
    head.free_bits = 10.0
    out = head(cls)
    assert float(out.kl.detach()) == pytest.approx(10.0 * 6) and out.kl_raw < out.kl
    # the KL weight: linear warm-up 0 -> vib_weight over kl_warmup steps, then constant
    cfg = PretrainConfig(vib_weight=0.02, kl_warmup=10)
    assert [vib_weight_at(cfg, s) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.01, 0.02, 0.02])
    assert vib_weight_at(PretrainConfig(), 0) == 0.05
    losses = {k: torch.tensor(1.0) for k in ("msrp", "contrastive", "denoise", "ot", "physics", "moe")}
    losses["vib"] = torch.tensor(20.0)
    assert float(pretrain_module._total(losses, 0.05) - pretrain_module._total(losses, 0.0)) == pytest.approx(1.0)


class _Killed(Exception):
    """Stands for a kill right after a checkpoint was written."""


def test_corpus_pretraining_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Full corpus (NIR + IR, with and without axes), KL warm-up and free bits on, snapshots:
    killed after the step-2 checkpoint and run again, the weights equal an uninterrupted run's."""
    cfg = PretrainConfig(steps=3, batch_size=4, warmup=1, checkpoint_every=2, log_every=1, kl_warmup=3,
                         free_bits=0.05, snapshot_steps=(1, 3), sampling_alpha=0.5, model=TINY)
    whole = pretrain(tmp_path / "whole", cfg, progress=False)
    assert whole["corpus_spectra"] == 3774 and whole["spectra_per_s"] > 0
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["vib_weight"] for r in rows] == pytest.approx([0.0, 0.05 / 3, 0.1 / 3], abs=1e-6)
    assert all(r["mu_chem_std"] > 0 for r in rows)
    assert json.loads((tmp_path / "whole" / "pretrain.json").read_text())["model"]["n_instruments"] == 14
    write = pretrain_module.write_checkpoint

    def write_then_die(*args):
        write(*args)
        raise _Killed

    monkeypatch.setattr(pretrain_module, "write_checkpoint", write_then_die)
    with pytest.raises(_Killed):
        pretrain(tmp_path / "cut", cfg, progress=False)
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert pretrain(tmp_path / "cut", cfg, progress=False)["steps"] == 3
    for name in ("model.safetensors", "model_step1.safetensors", "model_step3.safetensors",
                 "checkpoint/optimizer.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
