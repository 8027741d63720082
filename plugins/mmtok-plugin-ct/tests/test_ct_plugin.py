"""The plugin passes mmtok's conformance kit and is discovered through its entry point."""

import mmtok
from mmtok.testing import check_plugin
from mmtok_plugin_ct import plugin

MODALITIES = ["ct_volume", "anatomy_mask", "report_text"]
CODECS = ["ct-volume-fsq", "ct-volume-continuous", "anatomy-mask-regions", "anatomy-mask-composition",
          "report-words"]
SMALL = {"size": [8, 32, 32], "patch": [4, 16, 16], "spacing_mm": [3.0, 1.5, 1.5]}


def test_conformance_kit():
    """Every codec at a small grid (the default 64x512x512 one is checked in test_ct_codecs)."""
    small = {c: SMALL for c in CODECS if c != "report-words"}
    checked = check_plugin(plugin, batch_size=2, codec_overrides=small)
    assert checked == [*(f"modality:{m}" for m in MODALITIES), *(f"codec:{c}" for c in CODECS),
                       "reader:nifti", "reader:dicom", "reader:report-text", "bundle:ct-encoder"]


def test_discovered_through_entry_point():
    manager = mmtok.get_plugin_manager()
    info = {p.name: p for p in manager.plugins}["ct"]
    assert info.ok, info.errors
    assert info.package == "mmtok-plugin-ct"
    assert info.provides["modalities"] == MODALITIES
    assert info.provides["codecs"] == CODECS
    assert info.provides["readers"] == ["nifti", "dicom", "report-text"]
    assert info.provides["heads"] == ["ct-alignment"]
    assert info.provides["bundles"] == ["ct-encoder"]
    assert info.provides["sample_checks"] == ["ct-mask-on-volume-grid"]
    assert manager.reader_for("scan.nii.gz").name == "nifti"
    assert manager.reader_for("SCAN.NII").name == "nifti"
    assert manager.reader_for("report.txt").name == "report-text"
