"""A BSARec-style frequency branch beside each self-attention of a decoder-only backbone.

BSARec (Shin et al., AAAI 2024) mixes, in every block, self-attention with a fixed inductive
bias: the sequence's lowest frequencies (``low``) plus a learned share of the rest,
``low + beta^2 * (x - low)``, weighted ``alpha`` against ``1 - alpha`` for attention. Its filter
reads the whole window, future positions included, so BSARec trains on one prefix at a time. A
language model learns every position of a prompt at once and must stay causal, so here each
position is filtered as BSARec filters the last position of its window: the prefix ending there,
zero-padded on the left to ``window`` items, and the low-pass part read at its last row. That is
one fixed kernel over the last ``window`` positions (a causal convolution), the same for every
position and every prompt length.

Installed with hooks, so the transformers model and its weight names stay as they are: a forward
pre-hook on the body records the attention mask (padding is zeroed before filtering, as BSARec's
left padding is zeros), and a forward hook on each attention module mixes the branch into its
output. ``beta`` is a parameter of that attention module (``<attention>.filter_beta``), so it is
saved and loaded with the model's other weights once :func:`add_frequency_filter` has run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def kept_frequencies(c: int) -> int:
    """How many of the lowest frequencies BSARec's cutoff ``c`` keeps, as its authors count them."""
    return c // 2 + 1


def low_pass_matrix(length: int, keep: int) -> torch.Tensor:
    """(length, length) float64 ``P`` with ``P @ x`` = the ``keep`` lowest frequencies of ``x``.

    Zeroing frequencies of the orthonormal real FFT is linear along the sequence axis: ``P`` is
    that filter applied to the identity, a projection of rank ``2 * keep - 1`` (at most).
    """
    spectrum = torch.fft.rfft(torch.eye(length, dtype=torch.float64), dim=0, norm="ortho")
    spectrum[keep:] = 0
    return torch.fft.irfft(spectrum, n=length, dim=0, norm="ortho")


def causal_low_pass_kernel(window: int, keep: int) -> torch.Tensor:
    """(window,) weights: entry ``lag`` multiplies ``x[t - lag]`` in the low-pass part at ``t``.

    The last row of :func:`low_pass_matrix` ``(window, keep)``, read from the last position back.
    """
    return low_pass_matrix(window, keep)[-1].flip(0)


def causal_low_pass_matrix(length: int, kernel: torch.Tensor) -> torch.Tensor:
    """(length, length) lower-triangular band: row t holds ``kernel[t - j]`` at column j (lags < window)."""
    steps = torch.arange(length, device=kernel.device)
    lag = steps[:, None] - steps[None, :]  # query minus key position
    inside = (lag >= 0) & (lag < kernel.shape[0])
    return torch.where(inside, kernel[lag.clamp(0, kernel.shape[0] - 1)], torch.zeros((), dtype=kernel.dtype))


def _attention_modules(body: nn.Module) -> list[nn.Module]:
    layers = getattr(body, "h", None) or getattr(body, "layers", None)
    if layers is None:
        raise ValueError(f"model.frequency_filter: no decoder layers found in {type(body).__name__}")
    found = [getattr(layer, "attn", None) or getattr(layer, "self_attn", None) for layer in layers]
    if any(m is None for m in found):
        raise ValueError(f"model.frequency_filter: a layer of {type(body).__name__} has no self-attention")
    return found


def add_frequency_filter(model: Any, alpha: float, keep: int, window: int, dropout: float) -> None:
    """Mix ``alpha * frequency branch + (1 - alpha) * attention`` into every self-attention of
    ``model`` (a transformers decoder-only LM), in place."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("model.frequency_filter is for decoder-only backbones (gpt2, llama, qwen2)")
    body = model.base_model
    hidden = model.config.hidden_size
    attentions = _attention_modules(body)
    # Per forward pass, shared by every layer: the attention mask and the band matrix of its length.
    state: dict[str, Any] = {"mask": None, "band": None, "cached": False}

    def record_mask(module, args, kwargs):
        state["mask"] = kwargs.get("attention_mask")
        state["band"] = None  # built by the first layer, which knows the length and the dtype
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 names it ``cache``
        # A generation-cache step feeds only the new tokens: the branch would filter them without
        # the prompt before them and answer something else than the whole-prompt pass it learned.
        state["cached"] = past is not None and past.get_seq_length() > 0

    def mix(module, args, kwargs, output):
        if state["cached"]:
            raise ValueError(
                "model.frequency_filter filters whole prompts and cannot decode with a generation cache: "
                "use one token per item (index levels: 1) and one-token ranking"
            )
        x = args[0] if args else kwargs["hidden_states"]
        attended = output[0] if isinstance(output, tuple) else output
        valid = state["mask"]
        if valid is not None and valid.dim() == 2:
            x_in = x * valid[..., None].to(x.dtype)
        else:  # no mask: no padding
            x_in = x
        if state["band"] is None or state["band"].shape[0] != x.shape[1]:
            state["band"] = causal_low_pass_matrix(x.shape[1], module.filter_kernel.to(x))
        low = state["band"] @ x_in
        branch = low + module.filter_beta**2 * (x_in - low)
        branch = nn.functional.dropout(branch, dropout, module.training)
        out = alpha * branch + (1 - alpha) * attended
        return (out, *output[1:]) if isinstance(output, tuple) else out

    body.register_forward_pre_hook(record_mask, with_kwargs=True)
    for attention in attentions:
        # BSARec draws sqrt(beta) from a standard normal, one per channel.
        attention.register_parameter("filter_beta", nn.Parameter(torch.randn(hidden)))
        attention.register_buffer("filter_kernel", causal_low_pass_kernel(window, keep).float(), persistent=False)
        attention.register_forward_hook(mix, with_kwargs=True)
