"""mmtok: turn heterogeneous scientific data into tokens, through pluggable typed modalities
and codecs, and train one multimodal masked transformer on them.

This top level is the public API a plugin may import (with `mmtok.nn` for reusable layers and
`mmtok.testing` for the conformance kit); ``mmtok.testing.check_plugin`` reports a plugin that
imports anything else. Importing it never loads plugins: names that need them (the plugin
manager, the registry, training, inference) are imported on first use.
"""

import importlib

__version__ = "0.1.0"

from mmtok.codec import (ChannelNorm, Codec, CodecConfig, CodecOutput, NeuralCodec, NeuralCodecConfig, Tokenizer,
                         eval_mode)
from mmtok.codecs import (CategoricalCodec, CategoricalCodecConfig, ImageCodec, PatchCodec, PatchCodecConfig,
                          ScalarCodec, ScalarCodecConfig, SpectrumCodec, TableCodec, TableCodecConfig, TimeSeriesCodec,
                          TimeSeriesCodecConfig, VolumeCodec)
from mmtok.errors import CodecError, MmtokError, ModalityError, PluginError, RegistryError
from mmtok.hookspecs import (BundleSpec, CodecSpec, CommandSpec, HeadSpec, PretrainedSpec, ReaderSpec, SampleCheckSpec,
                             hookimpl)
from mmtok.io import (DamagedFileError, OutputLock, atomic_write, load_weights_into, open_safetensors,
                      read_checkpoint, read_json, read_safetensors, write_checkpoint, write_json, write_pretrained)
from mmtok.modalities import Columns, Image, Scalars, Spectrum, TimeSeries, Volume, stack_columns
from mmtok.modality import Modality
from mmtok.quantize import (ContinuousConfig, FSQConfig, LFQConfig, QuantizerConfig, ResidualVQConfig, VQConfig,
                            build_quantizer)
from mmtok.readers import read_csv, read_npy, read_npz
from mmtok.tokens import TokenBatch, TokenStream

#: public names whose modules load plugins or pull in training / inference: imported on first use
_LAZY = {
    "PluginManager": "mmtok.plugins", "get_plugin_manager": "mmtok.plugins",
    "reset_plugin_manager": "mmtok.plugins",
    "Registry": "mmtok.registry", "Manifest": "mmtok.manifest",
    "TokenShards": "mmtok.shards", "TokenDataset": "mmtok.shards", "held_out": "mmtok.shards",
    "FitReport": "mmtok.fit", "codebook_usage": "mmtok.fit", "evaluate_codec": "mmtok.fit",
    "fit_codec": "mmtok.fit",
    "Features": "mmtok.model", "MaskingConfig": "mmtok.model", "ModelConfig": "mmtok.model",
    "MultimodalMaskedTransformer": "mmtok.model", "StreamLayout": "mmtok.model", "StreamSpec": "mmtok.model",
    "encode_manifest": "mmtok.encode",
    "TrainConfig": "mmtok.train", "Trainer": "mmtok.train",
    "embed_tokens": "mmtok.inference", "impute_tokens": "mmtok.inference", "load_run": "mmtok.inference",
    "evaluate_run": "mmtok.evaluate",
}

__all__ = [
    "__version__",
    # data
    "Modality", "Image", "Spectrum", "TimeSeries", "Volume", "Scalars", "Columns", "stack_columns", "TokenStream",
    "TokenBatch",
    # codecs
    "Tokenizer", "Codec", "CodecConfig", "NeuralCodec", "NeuralCodecConfig", "CodecOutput", "ChannelNorm",
    "eval_mode", "PatchCodec", "PatchCodecConfig", "ImageCodec", "SpectrumCodec", "TimeSeriesCodec", "TimeSeriesCodecConfig",
    "VolumeCodec", "ScalarCodec", "ScalarCodecConfig", "TableCodec", "TableCodecConfig", "CategoricalCodec",
    "CategoricalCodecConfig", "QuantizerConfig", "FSQConfig", "VQConfig", "LFQConfig", "ResidualVQConfig",
    "ContinuousConfig", "build_quantizer",
    # plugin contract
    "hookimpl", "CodecSpec", "ReaderSpec", "HeadSpec", "BundleSpec", "PretrainedSpec", "SampleCheckSpec",
    "CommandSpec",
    # errors
    "MmtokError", "ModalityError", "CodecError", "PluginError", "RegistryError",
    # files
    "atomic_write", "write_json", "write_pretrained", "read_json", "write_checkpoint", "read_checkpoint", "read_safetensors",
    "open_safetensors", "load_weights_into", "OutputLock", "DamagedFileError", "read_npy", "read_npz",
    "read_csv",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmtok' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
