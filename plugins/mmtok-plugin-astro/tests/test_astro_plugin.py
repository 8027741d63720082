"""The plugin passes mmtok's conformance kit, is discovered through its entry point, and its
modalities / codecs have the documented defaults (on synthetic `example()` batches)."""

import pytest
import torch

import mmtok
from mmtok import ModalityError
from mmtok.testing import check_plugin
from mmtok_plugin_astro import (GaiaPhotometry, HSCImage, LegacySurveyImage, SourceCatalog,
                                from_nanomaggies, nanomaggies_per_unit, plugin, to_nanomaggies)

MODALITIES = ["hsc_image", "legacy_survey_image", "gaia_photometry", "gaia_astrometry", "source_catalog"]
CODECS = ["hsc-image-fsq", "legacy-image-fsq", "gaia-photometry-quantile", "gaia-astrometry-quantile",
          "source-catalog-quantile"]
PRETRAINED = ["astro/hsc-cosmos-fsq24", "astro/hsc-cosmos-catalog", "astro/gaia-cone-photometry",
              "astro/gaia-cone-astrometry"]


def test_conformance_kit():
    checked = check_plugin(plugin, batch_size=3)
    assert checked == [*(f"modality:{m}" for m in MODALITIES), *(f"codec:{c}" for c in CODECS),
                       *(f"pretrained:{p}" for p in PRETRAINED), "reader:fits"]


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {p.name: p for p in manager.plugins}["astro"]
    assert info.ok, info.errors
    assert info.package == "mmtok-plugin-astro"
    assert info.provides["modalities"] == MODALITIES
    assert info.provides["codecs"] == CODECS
    assert info.provides["readers"] == ["fits"]
    assert info.provides["pretrained"] == PRETRAINED
    assert manager.reader_for("cutout.fits.gz").name == "fits"
    assert manager.reader_for("CUT.FIT").name == "fits"


def test_codec_defaults_fit_examples():
    expected = {"hsc-image-fsq": ((5, 48, 48), 36, 1000), "legacy-image-fsq": ((4, 32, 32), 16, 1000),
                "gaia-photometry-quantile": ((3,), 3, 64), "gaia-astrometry-quantile": ((3,), 3, 64),
                "source-catalog-quantile": ((6,), 6, 64)}
    manager = mmtok.get_plugin_manager()
    for name, (shape, tokens, vocab) in expected.items():
        codec = manager.build_codec(name)
        ex = codec.modality.example()
        assert tuple(getattr(ex, codec.field).shape[1:]) == shape, name
        assert (codec.num_tokens, codec.vocab_size) == (tokens, vocab), name


def test_class_metadata():
    assert HSCImage.bands == ("g", "r", "i", "z", "y") and HSCImage.pixel_scale == 0.168
    assert LegacySurveyImage.bands == ("g", "r", "i", "z") and LegacySurveyImage.pixel_scale == 0.262
    assert GaiaPhotometry.bands == ("G", "BP", "RP")
    assert SourceCatalog.columns == ("x", "y", "flux", "a", "b", "theta")
    assert HSCImage.token_key == "tok_hsc_image"


def test_zero_points():
    # HSC coadd zp 27.0: 1 count = 10**-1.8 nanomaggies; a 27th-magnitude source has 1 count
    assert nanomaggies_per_unit(27.0) == pytest.approx(10 ** -1.8)
    assert HSCImage.nanomaggies_per_unit() == pytest.approx(0.0158489, rel=1e-5)
    assert LegacySurveyImage.nanomaggies_per_unit() == 1.0
    x = torch.tensor([1.0, 100.0])
    assert torch.allclose(from_nanomaggies(to_nanomaggies(x, 27.0), 27.0), x)
    # 22.5 - 2.5 log10(f_nmgy) is the AB magnitude: 100 counts at zp 27 -> mag 22.0
    assert 22.5 - 2.5 * torch.log10(to_nanomaggies(x, 27.0))[1] == pytest.approx(22.0)


def test_survey_codec_decodes_in_survey_units():
    codec = mmtok.get_plugin_manager().build_codec("hsc-image-fsq")
    ex = HSCImage.example(4, generator=torch.Generator().manual_seed(1))
    codec.fit_statistics(ex)
    # the normalisation statistics are fitted on nanomaggies: softening ~ HSC counts * 10**-1.8
    plain = mmtok.codecs.ImageCodec({**codec.config.model_dump(exclude={"crop"}), "modality": "hsc_image"},
                                    modality=HSCImage)
    plain.fit_statistics(ex)
    assert torch.allclose(codec.norm.scale, plain.norm.scale * HSCImage.nanomaggies_per_unit(), rtol=1e-4)
    out = codec.decode(codec.encode(ex), **codec.passthrough_fields(ex))
    assert out.flux.shape == ex.flux.shape
    assert torch.equal(out.variance, ex.variance) and torch.equal(out.mask, ex.mask)
    # preprocess (to nanomaggies, arcsinh, standardise) and postprocess invert each other exactly:
    # decoded flux is in HSC units again, not nanomaggies
    back = codec.postprocess(codec.preprocess(ex), **codec.passthrough_fields(ex))
    assert torch.allclose(back.flux, ex.flux, atol=1e-5, rtol=1e-4)


def test_modality_value_checks():
    ex = HSCImage.example(2)
    with pytest.raises(ModalityError, match=r"HSCImage.variance: must be >= 0"):
        HSCImage(flux=ex.flux, variance=-ex.variance)
    with pytest.raises(ModalityError, match=r"LegacySurveyImage.flux: expected Float\[Tensor, 'b 4 h w'\]"):
        LegacySurveyImage(flux=torch.zeros(2, 5, 32, 32))
    with pytest.raises(ModalityError, match=r"HSCImage.mask"):
        HSCImage(flux=ex.flux, mask=torch.zeros(2, 5, 48, 48))  # float, not integer bits


def test_table_modalities_from_record():
    row = {"source_id": 4295806720, "phot_g_mean_mag": 17.2, "phot_bp_mean_mag": 17.6,
           "phot_rp_mean_mag": 16.6, "ra": 150.1}
    gaia = GaiaPhotometry.from_record(row, sample_id="star-1")
    assert gaia.values.shape == (1, 3) and gaia.values[0, 2] == pytest.approx(16.6)
    with pytest.raises(ModalityError, match=r"sample 'star-2': GaiaPhotometry: missing column\(s\) "
                                            r"\['phot_bp_mean_mag'\]"):
        GaiaPhotometry.from_record({k: v for k, v in row.items() if k != "phot_bp_mean_mag"},
                                   sample_id="star-2")
    with pytest.raises(ModalityError, match=r"sample 'star-3': GaiaPhotometry.values: expected 3 values"):
        GaiaPhotometry.from_record({"values": [17.0, 16.0]}, sample_id="star-3")
    with pytest.raises(ModalityError, match=r"sample 'star-4': GaiaPhotometry: column\(s\) "
                                            r"\['phot_bp_mean_mag'\] are null"):
        GaiaPhotometry.from_record({**row, "phot_bp_mean_mag": float("nan")}, sample_id="star-4")
    with pytest.raises(ModalityError, match=r"sample 'star-5': GaiaPhotometry.values: expected finite"):
        GaiaPhotometry.from_record({"values": [17.0, float("nan"), 16.6]}, sample_id="star-5")
    src = SourceCatalog.from_record({"x": 1.0, "y": 2.0, "flux": 3.0, "a": 2.0, "b": 1.0, "theta": 0.1})
    assert src.values[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 2.0, 1.0, 0.1])
    assert set(src.to_catalog()) == set(SourceCatalog.columns)
