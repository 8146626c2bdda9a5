"""A promptrec decoder model as a plain ``transformers`` chat model directory.

Any server that loads a transformers directory and applies its chat template (``transformers
serve``, vLLM, ...) can then answer with the model: the template turns the conversation's last user
message into exactly the prompt the model was trained on (the message, then ``</s>``), and
generation stops at ``</s>`` after the item's code. The ``llm`` recommender with
``item_format="code"`` and ``codes_from`` set to the promptrec model directory reads and writes
those codes.
"""

from __future__ import annotations

from pathlib import Path

# Only the last user message counts: the model was trained on single prompts, not dialogues.
CHAT_TEMPLATE = (
    "{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}"
    "{%- set last = users[-1]['content'] -%}"
    "{%- if last is not string -%}{%- set last = last | map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{{ last }} {{ eos_token }}"
)


def export_chat_model(model_dir: str | Path, output: str | Path) -> Path:
    """Write the decoder (LoRA and other adapters merged) and its tokenizer, with a chat template
    and a generation config that stops at ``</s>``, to ``output``; return ``output``."""
    from ...backbones.tuning import unwrap
    from .model import P5Recommender

    rec = P5Recommender.from_pretrained(model_dir)
    if not rec.causal:
        raise ValueError(
            f"{model_dir} holds an encoder-decoder ({rec.config.model.backbone}); chat servers "
            "serve decoder-only models: train with model.backbone gpt2, llama or qwen2"
        )
    if rec.config.model.frequency_filter:
        raise ValueError(
            f"{model_dir} has a frequency branch (model.frequency_filter), which a plain transformers "
            "model does not have: it cannot be exported for a chat server"
        )
    model = rec.model
    if hasattr(model, "merge_and_unload"):  # peft: one plain model, as servers expect
        model = model.merge_and_unload()
    model = unwrap(model)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tok = rec.tokenizer
    tok.chat_template = CHAT_TEMPLATE
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    # Sampling unless a request says temperature 0 (servers such as transformers serve switch it
    # off then, and never on): the OpenAI meaning of temperature.
    gen.do_sample, gen.max_new_tokens = True, 16
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def serve_chat_model(model_dir: str | Path, port: int, log_path: str | Path, timeout: float = 300.0):
    """Start ``transformers serve`` on ``model_dir`` at ``127.0.0.1:port`` (its output appended to
    ``log_path``) and return ``(process, base_url)`` once a chat completion answers; the caller
    terminates the process. ``transformers serve`` comes with transformers' serving extra."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    cli = Path(sys.executable).with_name("transformers")
    with open(log_path, "ab") as log:  # a pipe nobody reads would fill up and block the server
        proc = subprocess.Popen(
            [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    # /v1/models scans the hub cache, so readiness is a real (two-token) completion.
    body = {"model": str(model_dir), "messages": [{"role": "user", "content": "history : none"}], "max_tokens": 2}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.post(f"{url}/chat/completions", json=body, timeout=60).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass  # not listening yet
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = Path(log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"transformers serve did not start on port {port}:\n{tail}")
        time.sleep(0.5)
