"""`mmtok report` and `mmtok plugins --codecs` on real token folders: the first 40 patients of
examples/clinic (tables) and, when mmtok-plugin-nir is installed, 8 held-out NIR spectra of
examples/spectra (line plots). The page's numbers are checked against counts read straight from
the shard files."""

import json
import math
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmtok.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLINIC = ROOT / "examples" / "clinic"
SPECTRA = ROOT / "examples" / "spectra"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects img srcs, the stream table's cells ({stream: {key: text}}) and notes."""

    def __init__(self):
        super().__init__()
        self.srcs, self.cells, self.notes, self.recon_tables = [], {}, [], 0
        self._stream = self._key = None
        self._note = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "tr" and "data-stream" in a:
            self._stream = a["data-stream"]
            self.cells[self._stream] = {}
        if tag == "td" and "data-k" in a:
            self._key = a["data-k"]
            self.cells[self._stream][self._key] = ""
        if tag == "p" and a.get("class") == "note":
            self._note = True
            self.notes.append("")
        if tag == "table" and a.get("class") == "recon":
            self.recon_tables += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self._key = None
        if tag == "p":
            self._note = False

    def handle_data(self, data):
        if self._key is not None:
            self.cells[self._stream][self._key] += data
        if self._note:
            self.notes[-1] += data


def subset(src: Path, tmp: Path, n: int, copy: list[str]) -> Path:
    """The first n samples of the example manifest in src, with the files it needs, under tmp."""
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["samples"] = manifest["samples"][:n]
    for rel in copy:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, tmp / rel)
    for s in manifest["samples"]:
        for entry in s["modalities"].values():
            if isinstance(entry, dict) and "path" in entry:
                (tmp / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / entry["path"], tmp / entry["path"])
    shutil.copy(src / "registry.yaml", tmp / "registry.yaml")
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    return tmp / "manifest.json"


def expected(tokens: Path) -> dict[str, dict[str, str]]:
    """Per stream, from the shard files themselves: presence, codes used, perplexity, usage."""
    index = json.loads((tokens / "index.json").read_text())
    tensors = [load_file(tokens / s) for s in index["shards"]]
    out = {}
    for key, info in index["streams"].items():
        present = torch.cat([t[f"{key}/present"] for t in tensors])
        row = {"present": str(int(present.sum())), "total": str(len(index["samples"]))}
        if info["vocab_size"] is not None:
            ids = torch.cat([t[f"{key}/ids"] for t in tensors])[present].reshape(-1)
            p = torch.bincount(ids, minlength=info["vocab_size"]).double()
            p = p[p > 0] / p.sum()
            row.update(codes_used=str(len(p)), perplexity=f"{math.exp(-(p * p.log()).sum()):.4g}",
                       usage=f"{len(p) / info['vocab_size']:.4g}")
        out[key] = row
    return out


def check_page(out: Path) -> Page:
    page = Page()
    page.feed((out / "index.html").read_text())
    assert page.srcs, "no image on the page"
    for src in page.srcs:
        assert not Path(src).is_absolute() and "/" not in src, src  # beside the page, relative
        data = (out / src).read_bytes()
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", src
    assert not list(out.glob(".*tmp")), "temporary files left behind"
    return page


@pytest.fixture(scope="module")
def clinic_tokens(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report_clinic")
    manifest = subset(CLINIC, tmp, 40, ["data/patients.csv"])
    assert main(["encode", str(manifest), "--out", str(tmp / "tokens"), "--quiet"]) == 0
    return tmp / "tokens"


def test_report_numbers_equal_the_shards(clinic_tokens, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(clinic_tokens), "--out", str(out), "--quiet"]) == 0
    page = check_page(out)
    want = expected(clinic_tokens)
    assert set(page.cells) == set(want) == {"tok_demographics", "tok_vitals", "tok_labs"}
    for key, row in want.items():
        for k, v in row.items():
            assert page.cells[key][k] == v, (key, k, page.cells[key][k], v)
    assert page.cells["tok_labs"]["present"] != page.cells["tok_labs"]["total"]  # labs left out for some
    assert sorted(page.srcs) == sorted(f"{k}-usage.png" for k in want)
    # decoded with the recorded registry and manifest: the clinic streams are tables
    assert page.recon_tables == 3, page.notes


def test_report_without_manifest_is_statistics_only(clinic_tokens, tmp_path):
    from mmtok.report import write_report

    page_path = write_report(clinic_tokens, tmp_path / "r")  # no registry, no manifest: no decoding
    page = check_page(tmp_path / "r")
    assert page_path == tmp_path / "r" / "index.html" and page.recon_tables == 0
    assert any("No decoded samples" in n for n in page.notes)


def test_report_on_spectra_draws_line_plots(tmp_path):
    pytest.importorskip("mmtok_plugin_nir")
    manifest = subset(SPECTRA, tmp_path, 4, [])
    data = json.loads(manifest.read_text())
    data["samples"] += json.loads((SPECTRA / "manifest.json").read_text())["samples"][-4:]  # 4 Tablet spectra
    for s in data["samples"][4:]:
        shutil.copy(SPECTRA / s["modalities"]["nir_spectrum"]["path"], tmp_path / s["modalities"]["nir_spectrum"]["path"])
    manifest.write_text(json.dumps(data))
    assert main(["encode", str(manifest), "--out", str(tmp_path / "tokens"), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "tokens"), "--out", str(tmp_path / "r"), "--quiet", "--samples", "3"]) == 0
    page = check_page(tmp_path / "r")
    assert "tok_nir_spectrum-decoded.png" in page.srcs and page.recon_tables == 1  # spectra drawn, properties a table
    want = expected(tmp_path / "tokens")
    assert page.cells["tok_nir_spectrum"]["perplexity"] == want["tok_nir_spectrum"]["perplexity"]
    assert page.cells["tok_nir_properties"]["present"] == "4" and page.cells["tok_nir_properties"]["total"] == "8"


def test_report_errors_are_one_line(tmp_path, capsys, monkeypatch, clinic_tokens):
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere: no such token folder" in err, err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no index.json" in err, err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # matplotlib not installed
    assert main(["report", str(clinic_tokens), "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and not (tmp_path / "r").exists(), err


def test_plugins_codecs_lists_streams_and_shipped_codecs(tmp_path, capsys):
    assert main(["plugins", "--codecs", "--registry", str(CLINIC / "registry.yaml"), "--json"]) == 0
    rows = {r["stream"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tok_labs"]["num_tokens"] == 3 and rows["tok_labs"]["vocab_size"] == 1000
    assert rows["tok_labs"]["checkpoint"] == "tabular/diabetes-labs-fsq"
    assert rows["tok_vitals"]["fitted_on"].startswith("diabetes study")  # metrics.json's "data"
    assert main(["plugins", "--codecs", "--json"]) == 0
    shipped = {r["pretrained"]: r for r in json.loads(capsys.readouterr().out)}
    assert shipped["tabular/diabetes-vitals-quantile"]["vocab_size"] == 64
    # the fitted_on convention of a checkpoint folder, and a stream without a checkpoint
    import mmtok

    folder = tmp_path / "codecs" / "vitals"
    mmtok.get_plugin_manager().load_pretrained("tabular/diabetes-vitals-quantile").save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps({"fitted_on": {"data": "my ward, 2024", "samples": 12,
                                                                   "split": "rows 0-11"}}))
    registry = (CLINIC / "registry.yaml").read_text().replace("checkpoint: tabular/diabetes-vitals-quantile",
                                                             "checkpoint: codecs/vitals")
    (tmp_path / "registry.yaml").write_text(registry.replace("    checkpoint: tabular/diabetes-labs-fsq\n", ""))
    assert main(["plugins", "--codecs", "--registry", str(tmp_path / "registry.yaml")]) == 0
    out = capsys.readouterr().out
    assert "fitted on   my ward, 2024; 12 samples; rows 0-11" in out, out
    assert "not fitted (no checkpoint)" in out
    assert main(["plugins", "--registry", str(tmp_path / "registry.yaml")]) == 1  # --registry needs --codecs
