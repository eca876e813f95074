"""Safe, lazy model I/O: safetensors (single, sharded), PEFT adapters, opt-in pickles, atomic writers."""

from weightspace.io._paths import expand_models, natural_key
from weightspace.io._peft import LoraConfig, LoraModule, read_adapter_config
from weightspace.io._safetensors import (
    DTYPES,
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    SafetensorsFile,
    SafetensorsWriter,
    TensorInfo,
    save_safetensors,
)
from weightspace.io._sources import (
    CONFIG_FILES,
    Entry,
    ModelSource,
    PeftSource,
    file_sha256,
    is_model_dir,
    open_source,
    torch_dtype_tag,
)
from weightspace.io._writers import lora_factors_from_delta, output_name, write_model

__all__ = [
    "CONFIG_FILES",
    "DTYPES",
    "FLOAT_DTYPES",
    "MAX_HEADER_BYTES",
    "Entry",
    "LoraConfig",
    "LoraModule",
    "ModelSource",
    "PeftSource",
    "SafetensorsFile",
    "SafetensorsWriter",
    "TensorInfo",
    "expand_models",
    "file_sha256",
    "is_model_dir",
    "lora_factors_from_delta",
    "natural_key",
    "open_source",
    "output_name",
    "read_adapter_config",
    "save_safetensors",
    "torch_dtype_tag",
    "write_model",
]
