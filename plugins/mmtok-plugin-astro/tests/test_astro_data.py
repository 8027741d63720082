"""The shipped real HSC / HST cutouts: FITS reader, from_record, SurveyAligner, codecs."""

import hashlib
import re

import numpy as np
import pytest
import torch

import mmtok
from mmtok import MmtokError, ModalityError
from mmtok.readers import read_npz
from mmtok_plugin_astro import (DATA_DIR, HSC_CUTOUTS, HST_FITS, HSCImage, LegacySurveyImage,
                                SourceCatalog, SurveyAligner, load_hsc_batch, load_hsc_catalog,
                                load_hsc_cutouts, read_cutout, read_fits)

CUT_HSC = HSC_CUTOUTS["cut_hsc"]


def test_shipped_files_match_data_md_checksums():
    table = (DATA_DIR / "DATA.md").read_text()
    sums = dict(re.findall(r"\| `([\w.]+)` \|.*\| `([0-9a-f]{64})` \|", table))
    assert sorted(sums) == sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in (".npz", ".fits", ".csv"))
    for name, digest in sums.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name


def test_fits_reader_on_real_cutouts():
    hsc = read_fits(CUT_HSC)
    assert hsc["flux"].shape == (5, 50, 50) and hsc["flux"].dtype == np.float32
    assert hsc["flux"].dtype.byteorder in "=|"  # native, though FITS stores big-endian
    assert float(hsc["pixel_scale_arcsec"]) == pytest.approx(0.168, rel=1e-6)
    assert np.allclose(hsc["flux"].sum(axis=(1, 2)), 1999.0, rtol=1e-6)  # normalised cutout
    hst = read_fits(HST_FITS)
    assert hst["flux"].shape == (250, 250)
    assert float(hst["pixel_scale_arcsec"]) == pytest.approx(0.03, rel=1e-6)
    assert mmtok.get_plugin_manager().reader_for(CUT_HSC).read(CUT_HSC)["flux"].shape == (5, 50, 50)


def test_gzipped_fits(tmp_path):
    import gzip

    gz = tmp_path / "cut.fits.gz"
    gz.write_bytes(gzip.compress(CUT_HSC.read_bytes()))
    assert mmtok.get_plugin_manager().reader_for(gz).name == "fits"
    assert np.array_equal(read_fits(gz)["flux"], read_fits(CUT_HSC)["flux"])


@pytest.mark.parametrize("cut", [1000, 2880, 50_000, 103_680 - 1000])
def test_truncated_fits_is_an_mmtok_error_naming_the_file(tmp_path, cut):
    bad = tmp_path / "truncated_cutout.fits"
    bad.write_bytes(CUT_HSC.read_bytes()[:cut])
    with pytest.raises(MmtokError, match=r"truncated_cutout\.fits: cannot read as FITS"):
        read_fits(bad)


def test_non_fits_and_headerless_files(tmp_path):
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a FITS file\n" * 300)
    with pytest.raises(MmtokError, match="junk.fits"):
        read_fits(junk)
    from astropy.io import fits

    empty = tmp_path / "header_only.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(MmtokError, match=r"header_only\.fits: no image HDU with data"):
        read_fits(empty)
    plain = tmp_path / "no_wcs.fit"
    fits.PrimaryHDU(np.ones((5, 8, 8), dtype=">i2")).writeto(plain)
    record = read_fits(plain)
    assert record["flux"].dtype == np.float32 and "pixel_scale_arcsec" not in record


def test_from_record_fits_and_npz():
    m = HSCImage.from_record(read_fits(CUT_HSC), sample_id="cut")
    assert m.flux.shape == (1, 5, 50, 50) and m.variance is None
    n = HSCImage.from_record(read_npz(HSC_CUTOUTS["hsc_cosmos_35"]), sample_id="c35")
    assert n.flux.shape == n.variance.shape == n.mask.shape == (1, 5, 58, 48)
    assert n.mask.dtype == torch.int64 and int(n.mask.max()) == 54304


def test_from_record_errors_name_sample_and_field():
    four = {"flux": np.ones((4, 50, 50), dtype=np.float32)}
    with pytest.raises(ModalityError) as err:
        HSCImage.from_record(four, sample_id="obj-3")
    assert str(err.value) == "sample 'obj-3': HSCImage.flux: expected 5 bands (g, r, i, z, y), found 4"
    record = read_npz(HSC_CUTOUTS["hsc_cosmos_35"])
    with pytest.raises(ModalityError, match=r"sample 'obj-4': HSCImage.variance: expected 5 bands"):
        HSCImage.from_record({**record, "variance": record["variance"][:3]}, sample_id="obj-4")
    with pytest.raises(ModalityError, match=r"sample 'obj-5': HSCImage: arrays have different shapes"):
        HSCImage.from_record({**record, "mask": record["mask"][:, :50]}, sample_id="obj-5")
    with pytest.raises(ModalityError, match=r"sample 'obj-6': HSCImage.flux: expected an array \(5 bands"):
        HSCImage.from_record({"flux": np.ones((50, 50))}, sample_id="obj-6")
    with pytest.raises(ModalityError, match=r"sample 'obj-7': LegacySurveyImage.flux: expected 4 bands "
                                            r"\(g, r, i, z\), found 5"):
        LegacySurveyImage.from_record(read_fits(CUT_HSC), sample_id="obj-7")
    with pytest.raises(ModalityError, match=r"sample 'obj-8': HSCImage: unknown record key\(s\) \['ivar'\]"):
        HSCImage.from_record({"flux": np.ones((5, 8, 8)), "ivar": np.ones((5, 8, 8))}, sample_id="obj-8")
    with pytest.raises(ModalityError, match=r"sample 'obj-9': HSCImage: record filters .* do not match"):
        HSCImage.from_record({**record, "filters": np.array(list("grizz"))}, sample_id="obj-9")
    with pytest.raises(ModalityError, match=r"sample 'obj-10': HSCImage.flux: no image in the record"):
        HSCImage.from_record({"variance": record["variance"]}, sample_id="obj-10")


def test_negative_variance_and_ivar_are_refused():
    """On the real HSC cutout with its variance plane: two negated pixels are named; a Legacy
    record (its first 4 bands, ivar = 1 / variance) passes until one ivar pixel is negative."""
    record = read_npz(HSC_CUTOUTS["hsc_cosmos_35"])
    variance = record["variance"].copy()
    variance[2, 10, 10], variance[0, 0, 0] = -variance[2, 10, 10], -variance[0, 0, 0]
    with pytest.raises(ModalityError, match=r"sample 'neg': HSCImage.variance: must be >= 0, found 2 negative"):
        HSCImage.from_record({**record, "variance": variance}, sample_id="neg")
    legacy = {"flux": record["images"][:4], "ivar": 1.0 / record["variance"][:4]}
    assert LegacySurveyImage.from_record(legacy, sample_id="ok").ivar.shape == (1, 4, 58, 48)
    legacy["ivar"][3, 5, 7] = -1.0
    with pytest.raises(ModalityError, match=r"sample 'neg': LegacySurveyImage.ivar: must be >= 0, found 1 negative"):
        LegacySurveyImage.from_record(legacy, sample_id="neg")


def test_pixel_scale_from_the_file_is_checked():
    hst = read_fits(HST_FITS)
    hst = {"flux": np.repeat(hst["flux"][None], 5, axis=0), "pixel_scale_arcsec": hst["pixel_scale_arcsec"]}
    with pytest.raises(ModalityError, match=r"sample 'hst': HSCImage: pixel scale 0.03 arcsec/px in the "
                                            r"file, HSCImage is 0.168 arcsec/px; resample it first"):
        HSCImage.from_record(hst, sample_id="hst")


def test_nan_pixels_are_rejected():
    record = read_fits(CUT_HSC)
    record["flux"][2, 10, 10] = np.nan
    record["flux"][4, 0, 0] = np.inf
    with pytest.raises(ModalityError, match=r"sample 'bad-pixels': HSCImage.flux: expected finite values, "
                                            r"found 2 NaN/inf"):
        HSCImage.from_record(record, sample_id="bad-pixels")
    good = HSCImage.from_record(read_fits(CUT_HSC))
    with pytest.raises(ModalityError, match="HSCImage.flux: expected finite"):
        good.replace(flux=good.flux.masked_fill(good.flux > 20, float("nan")))


def test_loaders():
    cutouts = load_hsc_cutouts()
    assert list(cutouts) == ["hsc_cosmos_35", "hsc_cosmos", "cut_hsc"]
    for name, m in cutouts.items():
        assert m.flux.shape == (1, 5, 48, 48), name
    c35 = cutouts["hsc_cosmos_35"]
    assert c35.variance.shape == c35.mask.shape == (1, 5, 48, 48)
    raw = read_cutout("hsc_cosmos_35")
    assert np.array_equal(c35.flux[0].numpy(), raw["images"][:, 5:53, :])  # centre crop of 58 x 48
    assert load_hsc_cutouts(32)["hsc_cosmos"].flux.shape == (1, 5, 32, 32)
    with pytest.raises(ModalityError, match="cannot crop 58x48 pixels to 64x64"):
        load_hsc_cutouts(64)
    assert load_hsc_batch().flux.shape == (3, 5, 48, 48)
    cat = load_hsc_catalog()
    assert cat.values.shape == (6, 6)
    brightest = [33.2213, 39.6317, 277.7011, 4.3964, 3.7919, 0.9135]  # x, y, flux, a, b, theta
    assert cat.values[3].tolist() == pytest.approx(brightest, rel=1e-4)
    with pytest.raises(ModalityError, match=r"SourceCatalog.from_catalog: missing column\(s\) \['flux', 'a'"):
        SourceCatalog.from_catalog(read_cutout("hsc_cosmos_35")["catalog"])
    with pytest.raises(ModalityError, match=r"sample 'c35': SourceCatalog.from_record builds one row"):
        SourceCatalog.from_record(read_cutout("hsc_cosmos_35"), sample_id="c35")


def _or_all(t: torch.Tensor) -> int:
    bits = 0
    for v in torch.unique(t).tolist():
        bits |= int(v)
    return bits


def _centroid_arcsec(flux: torch.Tensor, scale: float) -> torch.Tensor:
    """Flux-weighted centroid (..., 2) in arcsec from the image centre."""
    h, w = flux.shape[-2:]
    f = flux.double()
    yy = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) * scale
    xx = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) * scale
    total = f.sum((-2, -1))
    return torch.stack([(f.sum(-1) * yy).sum(-1) / total, (f.sum(-2) * xx).sum(-1) / total], -1)


@pytest.mark.parametrize("name", sorted(HSC_CUTOUTS))
def test_aligner_conserves_flux_on_real_hsc(name):
    m = HSCImage.from_record(read_cutout(name), sample_id=name)
    aligner = SurveyAligner.between(HSCImage, LegacySurveyImage)  # 0.168 -> 0.262 arcsec/px
    out = aligner(m.flux)
    h, w = m.flux.shape[-2:]
    assert out.shape == (1, 5, int(np.ceil(h * 0.168 / 0.262)), int(np.ceil(w * 0.168 / 0.262)))
    assert out.dtype == torch.float32
    total_in, total_out = m.flux.double().sum((-2, -1)), out.double().sum((-2, -1))
    assert torch.allclose(total_out, total_in, rtol=0.01)  # required: within 1 %
    assert torch.allclose(total_out, total_in, rtol=1e-6)  # measured: ~5e-9
    shift = (_centroid_arcsec(out, 0.262) - _centroid_arcsec(m.flux, 0.168)).abs().max()
    assert shift < 0.1  # arcsec, well under one 0.262" pixel
    if m.variance is not None:
        var = aligner.resample_variance(m.variance)
        mask = aligner.resample_mask(m.mask)
        assert var.shape == mask.shape == out.shape and bool((var >= 0).all())
        # bits are only OR-ed together, and the output covers the input: the same set of bits
        assert _or_all(mask) == _or_all(m.mask)
        LegacySurveyImage(flux=out[:, :4])  # its g, r, i, z bands fit the Legacy grid type


def test_aligner_sizes_and_hst_to_hsc():
    hst = read_fits(HST_FITS)
    flux = torch.from_numpy(hst["flux"])[None, None]
    aligner = SurveyAligner(float(hst["pixel_scale_arcsec"]), HSCImage.pixel_scale)
    out = aligner(flux)
    assert out.shape == (1, 1, 45, 45)  # 250 * 0.03 / 0.168 = 44.6 -> 45
    assert out.double().sum() == pytest.approx(flux.double().sum().item(), rel=1e-6)
    cut = HSCImage.from_record(read_cutout("cut_hsc")).flux
    cropped = SurveyAligner(0.168, 0.262, size=(32, 32))(cut)
    assert cropped.shape == (1, 5, 32, 32)
    identity = SurveyAligner(0.262, 0.262)(torch.arange(12.0).view(1, 3, 4))
    assert torch.allclose(identity, torch.arange(12.0).view(1, 3, 4))
    with pytest.raises(ModalityError, match="pixel scales must be > 0"):
        SurveyAligner(0.0, 0.262)


def test_aligner_mask_is_bitwise_or():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    mask[0, 0, 0, 0], mask[0, 0, 0, 1], mask[0, 0, 3, 3] = 1, 4, 32
    out = SurveyAligner(1.0, 2.0)(mask.double())  # flux: 2x2 blocks summed
    assert out.shape == (1, 1, 2, 2) and out[0, 0, 0, 0] == 5
    bits = SurveyAligner(1.0, 2.0).resample_mask(mask)
    assert bits[0, 0].tolist() == [[5, 0], [0, 32]]


def test_hsc_codec_round_trip_on_real_cutouts():
    codec = mmtok.get_plugin_manager().build_codec("hsc-image-fsq")
    batch = load_hsc_batch()
    codec.fit_statistics(batch)
    stream = codec.encode(batch)
    assert stream.ids.shape == (3, 36) and 0 <= int(stream.ids.min()) and int(stream.ids.max()) < 1000
    out = codec.decode(stream)
    assert type(out) is HSCImage and out.flux.shape == batch.flux.shape
    assert torch.isfinite(out.flux).all()
    # one sample with its variance and mask passed through decode unchanged
    c35 = load_hsc_cutouts()["hsc_cosmos_35"]
    one = codec.decode(codec.encode(c35), **codec.passthrough_fields(c35))
    assert one.flux.shape == (1, 5, 48, 48) and torch.equal(one.mask, c35.mask)
    assert torch.equal(codec.encode(c35).ids, stream.ids[:1])  # batch-independent
    with pytest.raises(ModalityError, match=r"hsc-image-fsq: HSCImage.flux must have per-sample shape "
                                            r"\(5, 48, 48\) for this codec, found \(5, 58, 48\)"):
        codec.encode(HSCImage.from_record(read_cutout("hsc_cosmos_35")))


def test_catalog_codec_on_real_catalogue():
    codec = mmtok.get_plugin_manager().build_codec("source-catalog-quantile", {"num_bins": 4})
    cat = load_hsc_catalog()
    codec.fit_statistics(cat)
    stream = codec.encode(cat)
    assert stream.ids.shape == (6, 6) and int(stream.ids.max()) < 4
    assert codec.decode(stream).values.shape == (6, 6)
