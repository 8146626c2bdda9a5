"""A GGUF file (llama.cpp's format) turned into a plain transformers directory, once.

transformers reads GGUF through the ``gguf`` package, de-quantising every tensor to float; that
takes a minute or more on a CPU and the model it gives refuses ``save_pretrained`` (it is marked
as quantised). The same architecture built from its config takes the de-quantised weights and
saves as any model does; loading that directory later takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SOURCE_FILE = "promptrec_source.json"  # what a converted directory was made from


def convert_gguf(file: Path, target: Path, source: dict | None = None) -> Path:
    """Write ``file``'s causal LM and tokenizer to ``target`` (float32 safetensors). The directory
    appears whole or not at all: it is written beside and renamed into place."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ValueError(f"{file}: reading GGUF files needs the gguf package (pip install gguf)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = Path(file).resolve()
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    config = loaded.config
    # The config still says how the weights were quantised; the saved ones are plain floats.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    target = Path(target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    (partial / SOURCE_FILE).write_text(json.dumps({"gguf": str(file), **(source or {})}, indent=2))
    if target.exists():  # another process finished first: keep its copy
        shutil.rmtree(partial)
    else:
        os.replace(partial, target)
    return target
