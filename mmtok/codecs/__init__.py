"""Generic codec families that plugins configure or subclass."""

from mmtok.codecs.categorical import CategoricalCodec, CategoricalCodecConfig
from mmtok.codecs.patch import (ImageCodec, PatchCodec, PatchCodecConfig, SpectrumCodec,
                                TimeSeriesCodec, TimeSeriesCodecConfig, VolumeCodec)
from mmtok.codecs.scalar import ScalarCodec, ScalarCodecConfig
from mmtok.codecs.table import TableCodec, TableCodecConfig

__all__ = ["PatchCodec", "PatchCodecConfig", "ImageCodec", "SpectrumCodec", "TimeSeriesCodec", "TimeSeriesCodecConfig",
           "VolumeCodec", "ScalarCodec", "ScalarCodecConfig", "TableCodec", "TableCodecConfig",
           "CategoricalCodec", "CategoricalCodecConfig"]
