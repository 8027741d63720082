"""mmtok's own generic pieces, registered through the same hooks as any plugin."""

from mmtok.codecs import (CategoricalCodec, ImageCodec, ScalarCodec, SpectrumCodec, TableCodec, TimeSeriesCodec,
                          VolumeCodec)
from mmtok.hookspecs import CodecSpec, ReaderSpec, hookimpl
from mmtok.modalities import Image, Scalars, Spectrum, TimeSeries, Volume
from mmtok.readers import read_csv, read_npy, read_npz


@hookimpl
def mmtok_modalities():
    return [Image, Spectrum, TimeSeries, Volume, Scalars]


@hookimpl
def mmtok_codecs():
    return [
        CodecSpec("image-patch", "image", ImageCodec,
                  {"channels": 3, "size": [32, 32], "patch": [8, 8]},
                  "multi-band 2D images, one FSQ token per 8x8 patch"),
        CodecSpec("spectrum-patch", "spectrum", SpectrumCodec,
                  {"channels": 1, "size": [128], "patch": [8]},
                  "1D spectra, one FSQ token per 8 channels"),
        CodecSpec("timeseries-patch", "time_series", TimeSeriesCodec,
                  {"channels": 1, "size": [64], "patch": [8]},
                  "regularly sampled series, one FSQ token per 8 steps (length: pad / crop / resample for "
                  "other lengths)"),
        CodecSpec("volume-patch", "volume", VolumeCodec,
                  {"channels": 1, "size": [8, 16, 16], "patch": [4, 8, 8]},
                  "3D volumes, one FSQ token per 4x8x8 patch"),
        CodecSpec("scalar-quantile", "scalars", ScalarCodec, {"columns": 4, "num_bins": 64},
                  "one token per column: quantile (CDF) bin"),
        CodecSpec("categorical", "scalars", CategoricalCodec, {"columns": 4, "num_categories": 16},
                  "discrete values and class labels: one exact token per column (its category at fit)"),
        CodecSpec("table-mlp", "scalars", TableCodec, {"columns": 4, "num_tokens": 2},
                  "several columns jointly, MLP + FSQ"),
    ]


@hookimpl
def mmtok_readers():
    return [
        ReaderSpec("npy", (".npy",), read_npy, "one numpy array as field 'data'"),
        ReaderSpec("npz", (".npz",), read_npz, "numpy archive, one field per array"),
        ReaderSpec("csv", (".csv",), read_csv, "CSV table, one field per column"),
    ]
