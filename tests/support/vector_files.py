"""Steering-vector files written the way their tools write them, for the reader tests.

repeng 0.4.0 (``ControlVector.export_gguf``) cannot be imported beside this project's pinned set: it
pins numpy<2 and uses ``np.float_`` at import, which numpy 2 removed. Its writer is a handful of
calls to the ``gguf`` library (which vLLM installs); ``write_control_vector_gguf`` makes those same
calls in the same order, so the file is byte-for-byte what repeng would write."""

from __future__ import annotations

from pathlib import Path


def write_control_vector_gguf(path: Path, directions: dict, model_type: str) -> Path:
    """A repeng control vector: ``{layer: float32 numpy vector}`` -> GGUF (arch ``controlvector``)."""
    import gguf
    import numpy as np

    arch = "controlvector"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", model_type)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for layer, vector in directions.items():
        writer.add_tensor(f"direction.{layer}", np.asarray(vector, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
