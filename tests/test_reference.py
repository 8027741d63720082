"""docs/reference.md is what `python -m mmtok.reference` generates from the installed plugins and
the pydantic configs (regenerate with --write after changing either)."""

from pathlib import Path

from mmtok.reference import render

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def test_the_reference_is_current():
    assert REFERENCE.read_text() == render(), "python -m mmtok.reference --write docs/reference.md"


def test_it_documents_every_setting_a_newcomer_asked_about():
    text = REFERENCE.read_text()
    for needle in ("`masking.streams.<KEY>.max_input`", "`masking.target_streams`", "`val_group`",
                   "### `TimeSeriesCodecConfig`", "`length`", "`norm`", "`hidden`", "`latent_dim`", "`blocks`",
                   "`patch`", "### `fsq` (`FSQConfig`)", "| `time_series` |"):
        assert needle in text, needle
