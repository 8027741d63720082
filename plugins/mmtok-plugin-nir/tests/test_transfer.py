"""The transfer protocol, SpectralFM transfer and the benchmark report, end to end on the real
Corn data in a reduced setting (tiny model, few steps, 2 repeats)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmtok_plugin_nir.baselines import TransferInputError, make_method
from mmtok.cli import main as mmtok_main
from mmtok_plugin_nir.benchmark import run_benchmark
from mmtok_plugin_nir.cli import main as mmtok_nir_alias
from mmtok_plugin_nir.datasets import load_corn, load_dataset
import mmtok_plugin_nir.pretrain as pretrain_module
from mmtok_plugin_nir.pretrain import PretrainConfig, pretrain, pretraining_corpus
from mmtok_plugin_nir.preprocessing import prepare
from mmtok_plugin_nir.protocol import (TransferSetting, calibration_split, draw_transfer_samples, make_task,
                                       run_transfer)
from mmtok_plugin_nir.transfer import SpectralFMTransfer

TINY = {"n_points": 256, "patch_size": 32, "d_model": 32, "n_mamba_layers": 2, "d_state": 4, "expand": 1,
        "n_heads": 2, "z_chem": 16, "z_inst": 8, "fno_modes": 8, "fno_width": 8, "wavelet_levels": 2}
FAST = {"calib_steps": 30, "transfer_steps": 10, "ttt_steps": 3}


def main(argv: list[str]) -> int:
    """``mmtok nir ARGV`` (the plugin's command through the ``mmtok_commands`` hook)."""
    return mmtok_main(["nir", *argv])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("spectralfm")
    summary = pretrain(run, PretrainConfig(steps=6, batch_size=8, warmup=2, checkpoint_every=3, model=TINY),
                       progress=False)
    assert summary["steps"] == 6 and summary["spectra_per_s"] > 0
    return run


class _Killed(Exception):
    """Stands for a kill right after a checkpoint was written."""


def test_pretraining_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """Killed after the step-1 checkpoint, then run again: the final weights and AdamW state equal
    those of an uninterrupted run (a resume that loaded no weights or no optimizer state would not)."""
    cfg = PretrainConfig(steps=2, batch_size=4, warmup=1, checkpoint_every=1, model=TINY, datasets=("corn",))
    pretrain(tmp_path / "whole", cfg, progress=False)
    write = pretrain_module.write_checkpoint

    def write_then_die(*args):
        write(*args)
        raise _Killed

    monkeypatch.setattr(pretrain_module, "write_checkpoint", write_then_die)
    with pytest.raises(_Killed):
        pretrain(tmp_path / "cut", cfg, progress=False)
    monkeypatch.undo()
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 1 and state["optimizer"]["param_groups"]
    assert pretrain(tmp_path / "cut", cfg, progress=False)["steps"] == 2
    for name in ("model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"):
        whole, cut = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole), name
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text()) == \
        json.loads((tmp_path / "whole" / "checkpoint" / "state.json").read_text())
    # more steps in the same folder continue from the checkpoint
    assert pretrain(tmp_path / "cut", dataclasses.replace(cfg, steps=3), progress=False)["steps"] == 3
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 3
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def _rows_found(spectra: torch.Tensor, corpus: torch.Tensor) -> torch.Tensor:
    """For each row of ``spectra``, whether it is (to float precision) a row of ``corpus``."""
    return torch.cdist(spectra.double(), corpus.double()).min(1).values < 1e-4  # distinct rows: > 0.03


def test_pretraining_never_sees_the_evaluation_rows(tmp_path, monkeypatch):
    """No held-out test spectrum of any instrument is in what pretraining draws its batches from
    (observed inside `pretrain`), nor in the corpus of either data set; every pool row is."""
    drawn = []
    batch = pretrain_module._batch

    def recording(part, *args):
        drawn.append(part)
        return batch(part, *args)

    monkeypatch.setattr(pretrain_module, "_batch", recording)
    pretrain(tmp_path, PretrainConfig(steps=1, batch_size=2, warmup=1, model=TINY, datasets=("corn",)), progress=False)
    assert [p.name for p in drawn] == ["corn"]
    corpus = {"corn": drawn[0].spectra, "tablet": pretraining_corpus(("tablet",), TINY["n_points"])[0].spectra}
    for name, seen in corpus.items():
        data = load_dataset(name)
        pool, test = calibration_split(data)
        for inst in data.instruments:
            test_x = prepare(data.instrument(inst)[test], data.wavelength_nm, TINY["n_points"])[0]
            pool_x = prepare(data.instrument(inst)[pool], data.wavelength_nm, TINY["n_points"])[0]
            assert not _rows_found(test_x, seen).any(), f"{name} {inst}: test rows in the pretraining corpus"
            assert _rows_found(pool_x, seen).all(), f"{name} {inst}: calibration rows missing"


def test_split_and_draws_never_touch_the_test_rows():
    corn = load_corn()
    pool, test = calibration_split(corn)
    assert pool.size == 60 and test.size == 20 and not set(pool) & set(test)
    draws = [draw_transfer_samples(pool, 10, r) for r in range(10)]
    assert all(set(d) <= set(pool) and d.size == 10 for d in draws)
    assert len({tuple(d) for d in draws}) == 10                      # 10 different random draws
    assert np.array_equal(draws[3], draw_transfer_samples(pool, 10, 3))  # reproducible
    task = make_task(corn, "m5", "mp6", "Moisture", pool, draws[0])
    np.testing.assert_array_equal(task.X_target_std, corn.instrument("mp6")[draws[0]])


def test_bad_transfer_requests_are_clear_errors(capsys):
    corn = load_corn()
    pool, _ = calibration_split(corn)
    with pytest.raises(TransferInputError, match=r"N = 61 transfer samples requested, but only 60"):
        draw_transfer_samples(pool, 61, 0)
    with pytest.raises(TransferInputError, match="source and target are both 'm5'"):
        run_transfer(corn, TransferSetting("corn", "m5", "m5", "Moisture", 5), lambda: make_method("pds"))
    assert main(["transfer", "--source", "m5", "--target", "mp6", "--property", "moisture",
                 "--n-transfer", "100", "--method", "pds"]) == 2
    assert "only 60 paired samples" in capsys.readouterr().err
    assert main(["transfer", "--source", "m5", "--target", "mp9", "--property", "moisture",
                 "--n-transfer", "5", "--method", "pds"]) == 2
    assert "no instrument 'mp9'" in capsys.readouterr().err
    base = ["transfer", "--source", "m5", "--target", "mp6", "--property", "oil", "--n-transfer", "5"]
    assert main([*base, "--method", "pls"]) == 2
    assert ("method: expected one of ['pls-source', 'sbc', 'ds', 'pds', 'cca', 'dipls', 'cnn', 'transformer', "
            "'lora-ct', 'spectralfm', 'shared-model'], found 'pls'") in capsys.readouterr().err
    assert main([*base, "--method", "spectralfm", "--checkpoint", "/no/such/run"]) == 2
    assert "checkpoint: expected SpectralFM weights at /no/such/run, found no such file" in capsys.readouterr().err
    assert main([*base, "--method", "spectralfm", "--checkpoint", "/no/such/run", "--spectralfm", "foo=1"]) == 2
    assert "spectralfm options: expected some of" in capsys.readouterr().err
    assert main([*base, "--method", "spectralfm", "--checkpoint", "/no/such/run", "--spectralfm", "ttt_steps"]) == 2
    assert "--spectralfm: expected KEY=VALUE items, found 'ttt_steps'" in capsys.readouterr().err


def test_errors_are_one_line_and_the_mmtok_nir_alias_still_works(capsys):
    bad = ["transfer", "--source", "m5", "--target", "mp9", "--property", "moisture", "--n-transfer", "5",
           "--method", "pds"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmtok nir transfer: error: ") and "no instrument 'mp9'" in err and err.count("\n") == 1
    assert mmtok_nir_alias(bad) == 2                    # deprecated `mmtok-nir`, same parser, one note
    note, line = capsys.readouterr().err.splitlines()
    assert "deprecated" in note and "mmtok nir" in note
    assert line.startswith("mmtok-nir transfer: error: ") and "no instrument 'mp9'" in line


def test_classical_transfer_beats_no_transfer_on_real_corn():
    corn = load_corn()
    none = run_transfer(corn, TransferSetting("corn", "m5", "mp6", "Oil", 0, repeats=1), lambda: make_method("pls-source"))
    pds = run_transfer(corn, TransferSetting("corn", "m5", "mp6", "Oil", 10, repeats=3), lambda: make_method("pds"))
    assert pds.mean("rmsep") < 0.5 * none.mean("rmsep")
    assert pds.std("rmsep") > 0                                       # the draws differ
    assert set(pds.summary()) >= {"r2", "rmsep", "rpd", "bias", "rmsep_std"}


def test_spectralfm_transfer_runs_ttt_and_lora(pretrained):
    corn = load_corn()
    pool, test = calibration_split(corn)
    task0 = make_task(corn, "m5", "mp6", "Moisture", pool, draw_transfer_samples(pool, 0, 0))
    task5 = make_task(corn, "m5", "mp6", "Moisture", pool, draw_transfer_samples(pool, 5, 0))
    x_test = corn.instrument("mp6")[test]
    zero = SpectralFMTransfer(pretrained, corn.wavelength_nm, **FAST).fit(task0)
    no_ttt = SpectralFMTransfer(pretrained, corn.wavelength_nm, **{**FAST, "ttt_steps": 0}).fit(task0)
    five = SpectralFMTransfer(pretrained, corn.wavelength_nm, **FAST).fit(task5)
    p0, p_plain, p5 = zero.predict(x_test), no_ttt.predict(x_test), five.predict(x_test)
    assert p0.shape == (20,) and np.isfinite(p0).all()
    assert not np.allclose(p0, p_plain)         # test-time training changed the (norm) parameters
    assert not np.allclose(p0, p5)              # the 5 pairs changed the adapters
    trainable = [n for n, p in five.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)   # LoRA on q / k / v only
    assert {n.split(".")[-2] for n in trainable} == {"q", "k", "v"}
    # the LoRA steps ran: every adapter's B (zero at the start) moved, and the predictions differ
    # from the same fit without LoRA steps (closed-form head + test-time training only)
    lora_b = {n: p for n, p in five.model.named_parameters() if n.endswith("lora_B")}
    assert len(lora_b) == 3 * five.model.config.n_transformer_layers
    assert all(p.abs().max() > 0 for p in lora_b.values()), [n for n, p in lora_b.items() if not p.abs().max() > 0]
    ridge_only = SpectralFMTransfer(pretrained, corn.wavelength_nm, **{**FAST, "calib_steps": 0, "transfer_steps": 0})
    assert not np.allclose(ridge_only.fit(task5).predict(x_test), p5)
    assert all(p.abs().max() == 0 for n, p in ridge_only.model.named_parameters() if n.endswith("lora_B"))


def test_benchmark_end_to_end_reduced(pretrained, tmp_path):
    """Every method, N in {0, 5}, one pair, one property, 2 repeats: the report, the plot, and a
    rerun that resumes instead of recomputing."""
    out = tmp_path / "bench"
    kw = dict(dataset="corn", methods=["pls-source", "sbc", "ds", "pds", "cca", "dipls", "spectralfm"],
              n_values=[0, 5], pairs=[("m5", "mp6")], properties=["Moisture"], repeats=2,
              checkpoint=pretrained, spectralfm_options=FAST, progress=False)
    rows = run_benchmark(out, **kw)
    got = {(r["method"], r["n_transfer"]) for r in rows}
    assert ("spectralfm", 0) in got and ("spectralfm", 5) in got and ("pds", 5) in got and ("dipls", 0) in got
    assert ("pds", 0) not in got                # PDS needs pairs
    report = (out / "report.md").read_text()
    assert "## m5 → mp6, Moisture" in report and "| pds |" in report and "| spectralfm |" in report
    assert (out / "rmsep_vs_n.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "results.jsonl").read_text().splitlines()
    assert all(len(json.loads(line)["per_repeat"]) == (2 if json.loads(line)["n_transfer"] else 1) for line in lines)
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"method": "cut-off')            # an interrupted write
    again = run_benchmark(out, **kw)
    assert len(again) == len(rows) and len((out / "results.jsonl").read_text().splitlines()) == len(lines) + 1
