"""A pretrained *base* LLM made answerable over the OpenAI chat protocol.

A base model (Gemma 3 270M is one) was never tuned on chat turns: it continues text. Its
directory gets a chat template that writes the conversation as a plain transcript (``User:`` /
``Assistant:`` paragraphs, the system message first) and ends with ``Assistant:``, which is text
such a model has seen and continues with an answer; few-shot demonstrations, sent as earlier
turns, become examples in the same transcript. A conversation that ends with an assistant message
is left open after it: that message is the start of the answer, which the model continues (the
llm recommender sends a template's answer opening, ``Best candidates:``, this way). Any server that applies a directory's chat
template (``transformers serve``, vLLM, ...) then serves it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TRANSCRIPT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- set text = m['content'] if m['content'] is string else m['content'] | map(attribute='text') | join(' ') -%}"
    "{%- if m['role'] == 'system' -%}{{ text + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'User: ' + text + '\\n\\n' }}"
    "{%- elif loop.last -%}{{ 'Assistant: ' + text }}"
    "{%- else -%}{{ 'Assistant: ' + text + '\\n\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if messages[-1]['role'] != 'assistant' -%}Assistant:{%- endif -%}"
)


def transcript_chat_directory(model_dir: str | Path, output: str | Path) -> Path:
    """``output``: ``model_dir``'s files (linked, not copied) with the transcript chat template in
    its tokenizer config, and greedy decoding unless a request asks for a temperature."""
    src, out = Path(model_dir), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        target = out / file.name
        if file.name in ("tokenizer_config.json", "generation_config.json") or target.exists():
            continue
        try:
            os.symlink(file.resolve(), target)
        except OSError:  # a filesystem without links
            shutil.copy2(file, target)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = TRANSCRIPT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    generation = json.loads((src / "generation_config.json").read_text()) if (src / "generation_config.json").is_file() else {}
    # A transcript answer ends where the next turn would begin; a server that honours neither
    # stop strings nor this still ends at the request's max_tokens.
    generation.update(do_sample=False, max_new_tokens=256)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out
