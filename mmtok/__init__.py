"""mmtok: turn heterogeneous scientific data into tokens, through pluggable typed modalities
and codecs, and train one multimodal masked transformer on them."""

__version__ = "0.1.0"

from mmtok.codec import Codec, CodecConfig, CodecOutput
from mmtok.errors import CodecError, MmtokError, ModalityError, PluginError, RegistryError
from mmtok.fit import FitReport, codebook_usage, fit_codec
from mmtok.hookspecs import BundleSpec, CodecSpec, HeadSpec, PretrainedSpec, ReaderSpec, SampleCheckSpec, hookimpl
from mmtok.modality import Modality
from mmtok.plugins import get_plugin_manager
from mmtok.registry import Registry
from mmtok.shards import TokenShards
from mmtok.tokens import TokenBatch, TokenStream

__all__ = [
    "__version__", "Modality", "ModalityError", "Codec", "CodecConfig", "CodecOutput",
    "CodecError", "MmtokError", "PluginError", "RegistryError", "TokenStream", "TokenBatch",
    "hookimpl", "CodecSpec", "ReaderSpec", "HeadSpec", "BundleSpec", "PretrainedSpec", "SampleCheckSpec",
    "get_plugin_manager", "Registry", "TokenShards", "fit_codec", "FitReport", "codebook_usage",
]
