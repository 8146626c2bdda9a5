"""The first answer token's logits on ONNX Runtime: the served path of one-token ranking and of
yes/no scores.

Why: a small LM's forward pass in PyTorch is mostly Python (module calls, building the attention
mask): 2.5-3.5 ms for the 2-layer GPT-2 of the quickstart on 4 prompts, against 0.7-0.9 ms for
the same graph in ONNX Runtime. On a server whose model process is the serial step, that is most
of a request's latency (bench/README.md, serving).

The graph is :meth:`LMKind.next_token_logits` itself, exported once with ``torch.onnx`` (dynamic
batch and length) and kept in a cache directory: exporting takes seconds (about 15 s for the
micro GPT-2), loading the file a fraction of one, so a restarted model process does not pay it
again. Only what needs the first answer token alone runs here; beam searches stay in PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

GRAPH_FILE = "next_token.onnx"


class NextTokenGraph(torch.nn.Module):
    """``(input_ids, attention_mask) -> (B, vocab)`` logits, as the LM kind computes them."""

    def __init__(self, model: Any, lm: Any) -> None:
        super().__init__()
        self.model = model
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        enc = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.lm.next_token_logits(self.model, enc, False)


def export(model: Any, lm: Any, example: dict[str, torch.Tensor], path: Path) -> None:
    """Write the next-token graph of ``model`` to ``path`` (atomically: a reader never sees half
    a file), traced on ``example`` with the batch and length left dynamic."""
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
    dims = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about every optional operator library it lacks
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                NextTokenGraph(model, lm).eval(),
                (example["input_ids"], example["attention_mask"]),
                tmp,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes=dims,
                dynamo=True,
                optimize=True,
                external_data=False,
            )
        os.replace(tmp, path)
    finally:
        exporter_log.setLevel(level)
        Path(tmp).unlink(missing_ok=True)


class OnnxNextToken:
    """An ONNX Runtime session over an exported next-token graph; called like
    ``LMKind.next_token_logits`` on an encoded batch."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # As many threads as torch would use here: the model process's budget, one by default.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def load_or_export(model: Any, lm: Any, example: dict[str, torch.Tensor], cache_dir: Path | None) -> OnnxNextToken:
    """The session for ``model``: from ``cache_dir`` when an earlier call exported it there,
    else exported first (into ``cache_dir``, or a temporary directory when None)."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ImportError as err:
        raise ImportError(f"runtime 'onnx' needs ONNX Runtime: pip install 'promptrec[onnx]' ({err})") from err
    if cache_dir is None:
        cache_dir = Path(tempfile.mkdtemp(prefix="promptrec_onnx_"))
    path = Path(cache_dir) / GRAPH_FILE
    if not path.is_file():
        export(model, lm, example, path)
    return OnnxNextToken(path)
