"""README claims that had no test: `--allow-absolute`, `mmtok decode` checking the codec
fingerprint, and residual VQ's id layout. Real data: the first patients of examples/clinic."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mmtok
from mmtok.cli import main
from mmtok.codecs.patch import SpectrumCodec
from mmtok.modalities import Spectrum
from mmtok.quantize import ResidualVQConfig, build_quantizer

CLINIC = Path(__file__).resolve().parents[1] / "examples" / "clinic"


@pytest.fixture
def absolute_manifest(tmp_path) -> Path:
    """The first 6 patients of the clinic example, their table named by its absolute path."""
    manifest = json.loads((CLINIC / "manifest.json").read_text())
    manifest["tables"]["patients"]["path"] = str(CLINIC / manifest["tables"]["patients"]["path"])
    manifest["samples"] = manifest["samples"][:6]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def encode(manifest: Path, out: Path, *extra: str) -> int:
    return main(["encode", str(manifest), "--registry", str(CLINIC / "registry.yaml"), "--out", str(out),
                 "--quiet", *extra])


def test_absolute_paths_only_with_allow_absolute(absolute_manifest, tmp_path, capsys):
    assert encode(absolute_manifest, tmp_path / "refused") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absolute path" in err and "--allow-absolute" in err, err
    assert not (tmp_path / "refused" / "index.json").exists()
    assert encode(absolute_manifest, tmp_path / "tokens", "--allow-absolute") == 0
    index = json.loads((tmp_path / "tokens" / "index.json").read_text())
    assert len(index["samples"]) == 6 and not index["skipped"]


def test_decode_refuses_a_codec_with_another_fingerprint(absolute_manifest, tmp_path, capsys):
    """Decoding with a registry whose codec is not the one that encoded the tokens (same name and
    config, other weights) is refused in one line; with the encoding registry it decodes."""
    tokens = tmp_path / "tokens"
    assert encode(absolute_manifest, tokens, "--allow-absolute") == 0
    args = ["decode", str(tokens), "--sample", "p001", "--stream", "tok_vitals"]
    assert main([*args, "--out", str(tmp_path / "same.npy"), "--registry", str(CLINIC / "registry.yaml")]) == 0
    assert np.load(tmp_path / "same.npy").shape == (1,)
    codec = mmtok.get_plugin_manager().load_pretrained("tabular/diabetes-vitals-quantile")
    with torch.no_grad():
        codec.centers += 1.0  # decodes to other values: another codec
    codec.save_pretrained(tmp_path / "vitals-shifted")
    registry = (CLINIC / "registry.yaml").read_text().replace("checkpoint: tabular/diabetes-vitals-quantile",
                                                             "checkpoint: vitals-shifted")
    assert "vitals-shifted" in registry
    (tmp_path / "registry.yaml").write_text(registry)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "other.npy"), "--registry", str(tmp_path / "registry.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'tok_vitals' was encoded by codec" in err and "--registry" in err, err
    assert not (tmp_path / "other.npy").exists()


def test_residual_vq_ids_are_position_major_with_a_depth_axis(corn):
    """(b, n * depth) ids: the `depth` ids of position p are ids[:, p*depth:(p+1)*depth], level by
    level; a residual codec's stream grid gets a trailing depth axis (35 patches x 4 levels)."""
    q = build_quantizer(ResidualVQConfig(num_quantizers=3, codebook_size=16), dim=8).eval()
    z = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    out = q.quantize(z)
    assert out.ids.shape == (2, 15)
    levels = q.impl(z)[1]  # the library's (b, n, levels)
    assert torch.equal(out.ids, levels.reshape(2, 15))
    assert torch.equal(out.ids.view(2, 5, 3)[:, :, 0], levels[:, :, 0])  # level 0 first in each group
    # the 3 ids of position 0 copied onto position 2 move position 2's code, and only that one
    ids = out.ids.clone()
    ids[:, 6:9] = ids[:, 0:3]
    codes, moved = q.ids_to_codes(out.ids), q.ids_to_codes(ids)
    torch.testing.assert_close(moved[:, 2], codes[:, 0])
    assert torch.equal(moved[:, [0, 1, 3, 4]], codes[:, [0, 1, 3, 4]])
    codec = SpectrumCodec({"modality": "spectrum", "channels": 1, "size": [700], "patch": [20],
                           "quantizer": {"kind": "rvq", "num_quantizers": 4, "codebook_size": 32}},
                          modality=Spectrum).eval()
    x = torch.tensor(corn["m5spec"][:3]).unsqueeze(1)
    wl = torch.tensor(corn["wavelength_nm"], dtype=torch.float32).expand(3, -1).clone()
    stream = codec.encode(Spectrum(values=x, wavelength=wl))
    assert codec.grid == stream.grid == (35, 4) and stream.ids.shape == (3, 140)
