"""BSARec: SASRec-style self-attention beside a frequency-domain inductive-bias branch.

Reference:
    Y. Shin, J. Choi, H. Wi, N. Park. "An Attentive Inductive Bias for Sequential Recommendation
    beyond the Self-Attention". AAAI 2024.

Architecture. Items are numbered and left-padded to ``max_len`` as in :mod:`.sasrec` (whose
recommender this one extends: item numbering, popularity cold start, scoring, saving and the
training loop are shared). The input is ``LayerNorm(item embedding + position embedding)``, then
dropout, then ``blocks`` post-LN blocks. In each block two branches read the same input ``x``
(B, L, d) and are mixed as ``alpha * filter + (1 - alpha) * attention``:

- the *filter* (the inductive bias): along the sequence axis, the ``c // 2 + 1`` lowest
  frequencies of the (orthonormal) real FFT of ``x`` are kept as the low-pass part, the rest is the
  high-pass part ``x - low``, and the branch gives ``LayerNorm(x + dropout(low + beta^2 * high))``
  with ``beta`` (d,) learned per channel. Keeping frequencies is linear along the sequence, so
  ``low`` is one (L, L) matrix (:func:`low_pass_matrix`) times ``x``, not an FFT pair;
- the *attention*: ``LayerNorm(x + dropout(Attention(x)))``, causal, padding keys masked
  by an additive -1e4 (a padding query, whose keys are then all masked, attends to every key).

then a GELU feed-forward of width ``4 * hidden``: ``LayerNorm(h + dropout(W2 gelu(W1 h)))``. The
filter mixes every position of the padded window, future ones included, so training cannot use
every position of a sequence at once as SASRec does: each prefix of a training sequence is an
example whose last hidden state predicts the next item (full softmax cross-entropy). Linear weights
are Xavier-normal with zero biases, embeddings normal with std 0.02. Dropout is
:class:`RandDropout` (torch's own on a CPU spends more on drawing its mask than the block's
matmuls take): with the matrix filter and projecting only the queries that attend, a Beauty epoch
takes 0.67-0.83 of the time it took on one CPU thread.

Defaults are the reference run on Beauty (MTandHJ/RecBoard, ``BSARec`` on
``Amazon2014Beauty_550_LOU``): d 64, 2 blocks, 1 head, dropout 0.5, alpha 0.7, c 5, Adam lr 1e-4,
weight decay 1e-4, batch 256, length 50, up to 200 epochs, best epoch by validation NDCG@10.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...backbones.frequency import kept_frequencies, low_pass_matrix
from ...core.recommender import RECOMMENDERS
from .sasrec import SASRec, _left_pad


def frequency_mix(
    x: torch.Tensor,
    keep: int,
    beta: torch.Tensor,
    low_pass: torch.Tensor | None = None,
    last_only: bool = False,
) -> torch.Tensor:
    """``low + beta^2 * (x - low)`` where ``low`` keeps the ``keep`` lowest frequencies of ``x``.

    ``x`` (B, L, d) is filtered along L (real FFT, orthonormal); ``beta`` broadcasts against
    (B, L, d). With every frequency kept, or ``beta`` = 1, this is the identity. ``low_pass`` is
    :func:`low_pass_matrix` ``(L, keep)`` in ``x``'s dtype where the caller keeps it: one small
    matmul in place of an FFT and its inverse (a fraction of their time on a CPU, and no complex
    tensors in autograd). ``last_only`` gives the last position alone, (B, 1, d).
    """
    if low_pass is None:
        low_pass = low_pass_matrix(x.shape[1], keep).to(x)
    if last_only:  # the filter's last row, which still reads every position
        low_pass, x_out = low_pass[-1:], x[:, -1:]
    else:
        x_out = x
    # (B, d, L) @ (L, Q): one matmul over B * d rows (low_pass @ x would broadcast into B of them)
    low = (x.transpose(1, 2) @ low_pass.T).transpose(1, 2)  # (B, Q, d)
    return low + beta**2 * (x_out - low)


class RandDropout(nn.Module):
    """:class:`torch.nn.Dropout` with the mask drawn from ``torch.rand`` on a CPU.

    The same distribution (each element kept with probability ``1 - p``, scaled by
    ``1 / (1 - p)``); torch's CPU ``bernoulli_`` costs about 3x a uniform draw and a compare,
    which made dropout the largest step after the matmuls in BSARec's training. On other devices
    ``F.dropout`` (fused) is used.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        keep = torch.rand_like(x).ge_(self.p).mul_(1 / (1 - self.p))  # 0 or 1 / (1 - p)
        return x * keep


class FrequencyFilter(nn.Module):
    """The inductive-bias branch: ``LayerNorm(x + dropout(frequency_mix(x)))``."""

    def __init__(self, hidden: int, c: int, dropout: float) -> None:
        super().__init__()
        self.keep = kept_frequencies(c)
        self.sqrt_beta = nn.Parameter(torch.randn(1, 1, hidden))
        self.dropout = RandDropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        # low_pass_matrix per window length, device and dtype: a constant, not a parameter
        self._low_pass: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, d) -> (B, L, d), or (B, 1, d) for the last position only."""
        key = (x.shape[1], x.device, x.dtype)
        if key not in self._low_pass:
            self._low_pass[key] = low_pass_matrix(x.shape[1], self.keep).to(x)
        mixed = frequency_mix(x, self.keep, self.sqrt_beta, self._low_pass[key], last_only)
        return self.norm((x[:, -1:] if last_only else x) + self.dropout(mixed))


class Attention(nn.Module):
    """Multi-head self-attention with an additive mask and dropout on the weights.

    As the authors' layer computes it (query, key and value projections, an output projection),
    written out so that the weights' dropout is :class:`RandDropout` and only the attending
    queries (the last position, in the last block) are projected.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = RandDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, queries: int) -> torch.Tensor:
        """``x`` (B, L, d); ``mask`` (B, 1 or heads, Q, L) added to the logits; the last
        ``queries`` positions attend: (B, Q, d)."""
        size = x.shape[-1] // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, h, T, s)
            return t.unflatten(-1, (self.heads, size)).transpose(1, 2)

        q = heads(self.query(x[:, -queries:])) * size**-0.5
        logits = q @ heads(self.key(x)).transpose(-1, -2) + mask  # (B, h, Q, L)
        weights = self.dropout(logits.softmax(dim=-1))
        return self.out((weights @ heads(self.value(x))).transpose(1, 2).flatten(2))  # (B, Q, d)


class BSARecBlock(nn.Module):
    """``alpha * filter + (1 - alpha) * attention``, then the feed-forward (module doc)."""

    def __init__(self, hidden: int, heads: int, dropout: float, alpha: float, c: int) -> None:
        super().__init__()
        self.alpha = alpha
        self.filter = FrequencyFilter(hidden, c, dropout)
        self.attn = Attention(hidden, heads, dropout)
        self.attn_dropout = RandDropout(dropout)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden), RandDropout(dropout)
        )
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``x`` (B, L, d), ``mask`` (B, 1, L, L) added to the attention logits.

        Returns (B, L, d), or with ``last_only`` the last position's state (B, 1, d), which
        needs every position's keys and spectrum but only one query and one feed-forward row.
        """
        queries = 1 if last_only else x.shape[1]
        attended = self.attn(x, mask[:, :, -queries:], queries)
        attended = self.attn_norm(x[:, -queries:] + self.attn_dropout(attended))
        h = self.alpha * self.filter(x, last_only) + (1 - self.alpha) * attended
        return self.ffn_norm(h + self.ffn(h))  # (B, L or 1, d)


class BSARecNet(nn.Module):
    """Embeddings, LayerNorm and dropout, ``blocks`` :class:`BSARecBlock` s (module doc)."""

    def __init__(
        self,
        n_items: int,
        hidden: int,
        blocks: int,
        heads: int,
        dropout: float,
        max_len: int,
        alpha: float,
        c: int,
    ) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = RandDropout(dropout)
        self.blocks = nn.ModuleList(
            BSARecBlock(hidden, heads, dropout, alpha, c) for _ in range(blocks)
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def item_table(self) -> torch.Tensor:
        """Output embeddings of items 1..n_items: (n_items, d)."""
        return self.item_emb.weight[1:]

    def forward(self, seqs: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states (B, L, d) of left-padded item sequences ``seqs`` (B, L), 0 = padding;
        with ``last_only``, (B, 1, d): the state after the last item, the last block computed
        for that position alone (about half the work)."""
        length = seqs.shape[1]
        positions = torch.arange(length, device=seqs.device)
        x = self.dropout(self.norm(self.item_emb(seqs) + self.pos_emb(positions)))  # (B, L, d)
        later = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)
        blocked = later | (seqs == 0)[:, None, :]  # (B, L, L) future or padding keys
        mask = (blocked.float() * -1e4)[:, None]  # (B, 1, L, L), the same for every head
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only and i == len(self.blocks) - 1)
        return x


@RECOMMENDERS.register("bsarec")
class BSARec(SASRec):
    """BSARec (module doc for architecture and protocol; the rest is :class:`.SASRec`'s).

    Args:
        hidden: embedding and hidden size d.
        blocks: BSARec blocks.
        heads: attention heads (must divide ``hidden``).
        dropout: on embeddings, attention weights and every branch's output.
        alpha: weight of the filter branch (1 - alpha: the attention branch), in [0, 1].
        c: the filter keeps the ``c // 2 + 1`` lowest frequencies as its low-pass part.
        max_len: sequence length seen by the model (the last ``max_len`` items).
        lr: Adam learning rate.
        weight_decay: Adam's L2 term.
        batch_size: training prefixes per step.
        epochs: maximum passes over the prefixes.
        eval_every: epochs between validation evaluations.
        patience: evaluations without a better validation NDCG@10 before stopping.
        valid_users: validation users sampled (seeded) for early stopping; None = all.
        time_limit: seconds of training after which no new epoch starts.
        seed: seeds the item numbering, initialisation, shuffling, dropout, the sample.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        progress: show a tqdm bar over epochs.
    """

    name = "bsarec"

    def __init__(
        self,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.5,
        alpha: float = 0.7,
        c: int = 5,
        max_len: int = 50,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        epochs: int = 200,
        eval_every: int = 1,
        patience: int = 20,
        valid_users: int | None = None,
        time_limit: float | None = None,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        super().__init__(
            hidden=hidden, blocks=blocks, heads=heads, dropout=dropout, max_len=max_len, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, epochs=epochs, eval_every=eval_every,
            patience=patience, loss="ce", valid_users=valid_users, time_limit=time_limit,
            seed=seed, device=device, progress=progress,
        )
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"c must be a non-negative integer, got {c!r}")
        self.alpha = float(alpha)
        self.c = c

    def _new_net(self) -> BSARecNet:
        return BSARecNet(
            len(self.items_), self.hidden, self.blocks, self.heads, self.dropout, self.max_len,
            self.alpha, self.c,
        )

    def _examples(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Every prefix of every training sequence: inputs (E, L) left-padded, targets (E, 1)."""
        prefixes = [s[max(0, k - self.max_len) : k] for s in sequences for k in range(1, len(s))]
        targets = np.concatenate([s[1:] for s in sequences] or [np.zeros(0, dtype=np.int64)])
        return _left_pad(prefixes, self.max_len), targets.astype(np.int64)[:, None]

    def _batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        device = self.net_.item_emb.weight.device
        last = self.net_(inputs.to(device), last_only=True)[:, -1]  # (B, d) state after each prefix
        return self._cross_entropy(last, self.net_.item_table(), targets[:, 0].to(device) - 1)


__all__ = ["BSARec", "BSARecBlock", "BSARecNet", "FrequencyFilter", "frequency_mix"]
