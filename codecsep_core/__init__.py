"""The CodecSep method: pure torch + numpy. No I/O beyond local model files, no Ray."""

from codecsep_core.codec_tables import DAC_CODECS, CodecInfo, CodecTables, codec_name
from codecsep_core.masker import Masker, MaskerConfig
from codecsep_core.model_files import load_masker, masker_config, masker_prompt_encoder, masker_to_bytes, save_masker
from codecsep_core.separator import ClipResult, Separator, SeparatorConfig

__all__ = [
    "DAC_CODECS",
    "ClipResult",
    "CodecInfo",
    "CodecTables",
    "Masker",
    "MaskerConfig",
    "Separator",
    "SeparatorConfig",
    "codec_name",
    "load_masker",
    "masker_config",
    "masker_prompt_encoder",
    "masker_to_bytes",
    "save_masker",
]
