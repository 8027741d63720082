"""The transfer protocol, SpectralFM transfer and the benchmark report, end to end on the real
Corn data in a reduced setting (tiny model, few steps, 2 repeats)."""

import json

import numpy as np
import pytest

from mmtok_plugin_nir.baselines import TransferInputError, make_method
from mmtok.cli import main as mmtok_main
from mmtok_plugin_nir.benchmark import run_benchmark
from mmtok_plugin_nir.cli import main as mmtok_nir_alias
from mmtok_plugin_nir.datasets import load_corn
from mmtok_plugin_nir.pretrain import PretrainConfig, pretrain
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


def test_pretraining_resumes_from_its_checkpoint(tmp_path):
    cfg = dict(batch_size=4, warmup=1, checkpoint_every=2, model=TINY, datasets=("corn",))
    pretrain(tmp_path, PretrainConfig(steps=2, **cfg), progress=False)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["optimizer"]["param_groups"]
    assert pretrain(tmp_path, PretrainConfig(steps=4, **cfg), progress=False)["steps"] == 4
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 4
    assert not list(tmp_path.glob(".*.tmp"))


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
    assert "method: expected one of ['cca', 'dipls', 'ds', 'pds', 'pls-source', 'sbc', 'spectralfm'], found 'pls'" \
        in capsys.readouterr().err
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
