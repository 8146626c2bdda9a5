"""SASRec baseline: a causal self-attention encoder over the user's item sequence.

Reference:
    W.-C. Kang, J. McAuley. "Self-Attentive Sequential Recommendation". ICDM 2018.
Full cross-entropy training as in the strongest published SASRec numbers on this benchmark
(see the reference table in the shared data README; e.g. Klenitskiy & Vasilev, "Turning Dross
Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023).

Architecture. Items are numbered 1..n_items by a seeded permutation of the catalogue (0 is
padding), so no id carries the order of the source file, which may leak the test split.
A sequence is left-padded to ``max_len``; its input is ``sqrt(hidden) * item embedding + learned
position embedding``, then dropout, padding positions zeroed. Then ``blocks`` blocks as in the
authors' code (and the reference PyTorch port behind the published full-CE numbers): LayerNorm on
the attention *query* only, keys and values the raw block input, which is also the residual;
then LayerNorm before a ReLU feed-forward of width ``hidden`` whose residual is the *normalised*
input; padding positions zeroed after each block; a final LayerNorm (all LayerNorms eps 1e-8).
Dropout acts on the embeddings, the attention weights and after each feed-forward layer, not on
the attention output. Attention is causal and never looks at padding keys (as in the authors'
TensorFlow code; the PyTorch port lets queries attend to padding keys). Embeddings and linear
weights are Xavier-normal, biases zero. The item embedding table is shared between input and
output: an item's score is the dot product of the hidden state with its embedding.

Training. Per user, the last ``max_len + 1`` items of the *training* sequence (``split.train``
only): inputs are all but the last, targets the same shifted by one, and every position with a
real input is a training example. Most positions of a short sequence are padding, so each batch
is *packed* (:func:`pack`: several users' sequences side by side in one row, attention kept
within each sequence, each token at its left-padded position), which changes no output and
runs the encoder on a fraction of the rows. ``loss``:

- ``"ce"``: full softmax cross-entropy over all items. Hidden states of the real positions are
  gathered first, so the (positions x n_items) logits are computed only where there is a target,
  by :class:`SoftmaxCrossEntropy` (one ``exp`` pass, the logits buffer reused across batches).
- ``"bce"``: the paper's loss, binary cross-entropy on the target and one uniformly drawn
  negative per position (a draw equal to the target is not counted; the paper instead redraws
  any item of the user's sequence).
- ``"sampled"``: sampled softmax over the target and ``num_negatives`` uniform negatives shared by
  all positions of a batch (one matmul); negatives equal to a position's target are masked.

Adam with ``weight_decay``; every ``eval_every`` epochs NDCG@10 on the validation users (all, or a
seeded sample of ``valid_users``) through :func:`~promptrec.evaluation.ranking.evaluate_rankings`; the
best weights are kept and training stops after ``patience`` evaluations without improvement.
The defaults are the reference run on Beauty (README: d 64, 2 blocks, 1 head, dropout 0.6, lr 5e-4,
weight decay 1e-8, batch 512, length 50, up to 200 epochs, best epoch by validation NDCG@10).

Inference. The user's history of the stage (``"valid"``: training sequence; ``"test"``: plus the
validation item), its last ``max_len`` items, is encoded; the hidden state at the last position
scores every item (the history mask and the top-k are
:class:`~promptrec.core.recommender.ScoringRecommender`'s). Users without history get the training
popularity order (score = interaction count).
"""

from __future__ import annotations

import time
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.recommender import RECOMMENDERS, STAGES
from ...data.split import Split
from ..torch_base import TorchRecommender, check_positive_ints, valid_sample

LOSSES = ("ce", "bce", "sampled")

_NO_ITEMS = np.zeros(0, dtype=np.int64)


class PaddedAttention(nn.Module):
    """Multi-head attention whose queries also see the sequence's padding keys, as in the
    reference PyTorch port behind the published full-CE numbers.

    There, a left-padded row of length ``max_len`` holding ``n`` items has ``max_len - n`` padding
    positions whose block input is zero, so each is the same key (the key projection's bias) with
    the same value (the value projection's bias), visible to every real query. Here they are one
    extra key whose logit is raised by ``log(max_len - n)``: the same softmax, whatever row
    layout (left-padded or packed) the real tokens come in. Dropout drops that key's weight as a
    whole where the port drops each padding key's share on its own (the same mean).
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor
    ) -> torch.Tensor:
        """``query`` and ``x`` (B, L, d); ``mask`` (B, L, L) True where a query may not attend;
        ``padding`` (B, L): padding keys each query's sequence shows (0 = none)."""
        batch, length, hidden = x.shape
        size = hidden // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, size).transpose(1, 2)  # (B, h, L, s)

        q, k, v = split(self.query(query)), split(self.key(x)), split(self.value(x))
        q = q / size**0.5
        scores = (q @ k.transpose(-1, -2)).masked_fill(mask[:, None], -torch.inf)  # (B, h, L, L)
        pad_key = self.key.bias.view(1, self.heads, 1, size)  # key of a zero input
        pad_value = self.value.bias.view(1, self.heads, 1, size)
        sink = (q * pad_key).sum(-1, keepdim=True)  # (B, h, L, 1)
        sink = sink + padding.float().log()[:, None, :, None]  # -inf where there is no padding
        weights = torch.cat([scores, sink], dim=-1).softmax(dim=-1)
        weights = self.dropout(weights)  # (B, h, L, L + 1)
        out = weights[..., :length] @ v + weights[..., length:] * pad_value  # (B, h, L, s)
        return self.out(out.transpose(1, 2).reshape(batch, length, hidden))


class SASRecBlock(nn.Module):
    """One block of the authors' code: LayerNorm on the attention *query* only (keys and values
    are the raw block input, which is also the residual), then LayerNorm before a ReLU
    feed-forward of width ``hidden`` whose residual is the *normalised* input.

    Dropout acts on the attention weights and after each feed-forward layer, not on the attention
    output.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = PaddedAttention(hidden, heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, d); ``mask`` and ``padding`` as in :class:`PaddedAttention`."""
        x = x + self.attn(self.attn_norm(x), x, mask, padding)
        x = self.ffn_norm(x)
        return x + self.ffn(x)  # (B, L, d)


class SASRecNet(nn.Module):
    """Item + position embeddings, ``blocks`` :class:`SASRecBlock` s, final LayerNorm.

    ``forward`` takes left-padded rows, or *packed* rows (several users' sequences side by side,
    see :func:`pack`) with each token's position and sequence id: attention never crosses
    sequences and every other step is per token, so packing changes no output.
    """

    def __init__(
        self, n_items: int, hidden: int, blocks: int, heads: int, dropout: float, max_len: int
    ) -> None:
        super().__init__()
        self.heads = heads
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(hidden, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8)
        # As in the reference PyTorch code: Xavier-normal embeddings and attention output,
        # query/key/value Xavier-uniform as one (3d, d) matrix with zero biases (torch's
        # MultiheadAttention), the feed-forward layers torch's default (there: 1x1 convolutions).
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        for block in self.blocks:
            bound = (6 / (4 * hidden)) ** 0.5  # Xavier-uniform of a (3 * hidden, hidden) matrix
            for layer in (block.attn.query, block.attn.key, block.attn.value):
                nn.init.uniform_(layer.weight, -bound, bound)
                nn.init.zeros_(layer.bias)
            nn.init.xavier_normal_(block.attn.out.weight)
            nn.init.zeros_(block.attn.out.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def item_table(self) -> torch.Tensor:
        """Output embeddings of items 1..n_items (the input table without padding): (n_items, d)."""
        return self.item_emb.weight[1:]

    def forward(
        self,
        seqs: torch.Tensor,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, L, d) of item rows ``seqs`` (B, L), 0 = padding.

        Without ``positions`` and ``segments`` a row is one left-padded sequence (its last item
        at position L - 1). Packed rows give each token's position (B, L) and the id of its
        sequence (B, L; -1 on empty slots).
        """
        length = seqs.shape[1]
        pad = (seqs == 0)[..., None]  # (B, L, 1)
        if positions is None or segments is None:
            positions = torch.arange(length, device=seqs.device).expand_as(seqs)
            segments = torch.where(seqs > 0, 0, -1)
        x = self.item_emb(seqs) * self.item_emb.embedding_dim**0.5 + self.pos_emb(positions)
        x = self.dropout(x).masked_fill(pad, 0.0)  # (B, L, d)
        # True = may not attend: later tokens and other sequences (padding is a sequence of its
        # own). Every token may see itself, so no row is fully masked.
        later = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)
        same = segments[:, :, None] == segments[:, None, :]  # (B, L, L)
        blocked = later | ~same
        # padding keys of each token's left-padded row: max_len - its sequence's length
        padding = self.pos_emb.num_embeddings - same.sum(dim=-1)  # (B, L)
        for block in self.blocks:
            x = block(x, blocked, padding).masked_fill(pad, 0.0)
        return self.final_norm(x)  # (B, L, d)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ table.T`` with one pass of ``exp`` (the softmax of the
    forward pass is kept for the backward pass instead of being recomputed from log-probs), the
    (N, V) logits written into ``workspace`` (a flat buffer reused from batch to batch: a fresh
    allocation of that size costs as much as the matmul, in page faults)."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, table: torch.Tensor, target: torch.Tensor, workspace: torch.Tensor
    ) -> torch.Tensor:
        logits = workspace[: hidden.shape[0] * table.shape[0]].view(hidden.shape[0], -1)  # (N, V)
        torch.mm(hidden, table.T, out=logits)
        top = logits.max(dim=1, keepdim=True).values  # (N, 1)
        picked = logits.gather(1, target[:, None])  # (N, 1)
        expd = logits.sub_(top).exp_()  # (N, V), in place: the logits are not needed again
        total = expd.sum(dim=1, keepdim=True)  # (N, 1)
        ctx.save_for_backward(hidden, table, target, expd, total)
        return (total.log() + top - picked).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        hidden, table, target, expd, total = ctx.saved_tensors
        probs = expd.div_(total)  # (N, V) softmax, in place (backward runs once)
        probs[torch.arange(len(target), device=target.device), target] -= 1.0
        probs.mul_(grad / len(target))  # d loss / d logits
        return probs @ table, probs.T @ hidden, None, None


class SoftmaxCrossEntropy:
    """``F.cross_entropy(hidden @ table.T, target)`` (mean over the N rows), faster on a CPU.

    Call with ``hidden`` (N, d), ``table`` (V, d), ``target`` (N,) class indices in 0..V-1. The
    object keeps the logits' buffer between calls (one per training loop; not thread-safe).
    """

    def __init__(self) -> None:
        self.workspace = torch.empty(0)

    def __call__(self, hidden: torch.Tensor, table: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = hidden.shape[0] * table.shape[0]
        if self.workspace.numel() < size or self.workspace.device != hidden.device:
            self.workspace = torch.empty(size, dtype=hidden.dtype, device=hidden.device)
        return _SoftmaxCrossEntropy.apply(hidden, table, target, self.workspace)


def pack(
    inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (B, L) inputs and targets -> packed (R, L) rows, R <= B.

    Short sequences are mostly padding (Amazon users have ~9 items for L = 50), so the sequences
    are laid side by side (first-fit, longest first) and the encoder runs on R rows instead of B.
    Returns items, targets, positions (each token's column in its left-padded row) and segments
    (the sequence's row in ``inputs``; -1 on empty slots); empty slots hold item and target 0.
    """
    batch, length = inputs.shape
    lengths = (inputs > 0).sum(dim=1).numpy()  # (B,)
    rows = np.zeros(batch, dtype=np.int64)
    offsets = np.zeros(batch, dtype=np.int64)
    free = np.full(batch + 1, length)  # room left in each row; row `used` is still empty
    used = 0
    for seq in np.argsort(-lengths, kind="stable"):
        row = int(np.argmax(free[: used + 1] >= lengths[seq]))
        rows[seq], offsets[seq] = row, length - free[row]
        free[row] -= lengths[seq]
        used += row == used
    n_rows = max(used, 1)
    seq = np.repeat(np.arange(batch), lengths)  # (N,) sequence of each real token
    step = np.arange(len(seq)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,)
    source = torch.from_numpy(length - lengths[seq] + step)  # column in the left-padded row
    row, col = torch.from_numpy(rows[seq]), torch.from_numpy(offsets[seq] + step)
    seq_t = torch.from_numpy(seq)
    packed = []
    for values, fill in ((inputs[seq_t, source], 0), (targets[seq_t, source], 0), (source, 0), (seq_t, -1)):
        out = torch.full((n_rows, length), fill, dtype=torch.int64)
        out[row, col] = values
        packed.append(out)
    items, packed_targets, positions, segments = packed
    return items, packed_targets, positions, segments


def sequence_loss(
    net: SASRecNet,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: str = "ce",
    num_negatives: int = 100,
    positions: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    cross_entropy: SoftmaxCrossEntropy | None = None,
) -> torch.Tensor:
    """Mean next-item loss over the real positions of a batch.

    ``inputs`` and ``targets`` are (B, L) item numbers, 0 where there is no example (padding);
    ``positions`` and ``segments`` describe packed rows (:func:`pack`), as in ``net.forward``.
    Only real positions reach the output layer: their hidden states are gathered first.
    ``cross_entropy`` (for ``"ce"``) may carry its buffer over from the previous batch.
    """
    hidden = net(inputs, positions, segments)  # (B, L, d)
    real = targets > 0  # (B, L)
    h = hidden[real]  # (N, d), N = number of real positions
    positive = targets[real]  # (N,) item numbers 1..n_items
    table = net.item_table()  # (n_items, d)
    if loss == "ce":
        return (cross_entropy or SoftmaxCrossEntropy())(h, table, positive - 1)
    n_items = table.shape[0]
    pos_logit = (h * net.item_emb(positive)).sum(-1)  # (N,)
    if loss == "bce":
        negative = torch.randint(1, n_items + 1, positive.shape, device=h.device)  # (N,)
        neg_logit = (h * net.item_emb(negative)).sum(-1)  # (N,)
        not_hit = (negative != positive).float()  # a draw of the target is no negative
        return F.binary_cross_entropy_with_logits(
            pos_logit, torch.ones_like(pos_logit)
        ) + F.binary_cross_entropy_with_logits(
            neg_logit, torch.zeros_like(neg_logit), weight=not_hit
        )
    if loss == "sampled":
        negative = torch.randint(1, n_items + 1, (num_negatives,), device=h.device)  # (n_neg,)
        neg_logits = h @ net.item_emb(negative).T  # (N, n_neg)
        neg_logits = neg_logits.masked_fill(negative[None, :] == positive[:, None], -torch.inf)
        logits = torch.cat([pos_logit[:, None], neg_logits], dim=1)  # (N, 1 + n_neg)
        return F.cross_entropy(logits, torch.zeros_like(positive))
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


@RECOMMENDERS.register("sasrec")
class SASRec(TorchRecommender):
    """SASRec (module doc for architecture, losses and protocol).

    Args:
        hidden: embedding and hidden size d.
        blocks: transformer blocks.
        heads: attention heads (must divide ``hidden``).
        dropout: on embeddings, attention weights, feed-forward and residual branches.
        max_len: sequence length seen by the model (the last ``max_len`` items).
        lr: Adam learning rate.
        weight_decay: Adam's L2 term.
        batch_size: user sequences per step.
        epochs: maximum passes over the users.
        eval_every: epochs between validation evaluations.
        patience: evaluations without a better validation NDCG@10 before stopping.
        loss: ``"ce"`` (full softmax), ``"bce"`` (one negative, the paper) or ``"sampled"``.
        num_negatives: negatives per batch for ``loss="sampled"``.
        valid_users: validation users sampled (seeded) for early stopping; None = all.
        time_limit: seconds of training after which no new epoch starts (the last one is
            validated and the best weights kept; ``fit_info_["stopped_by"]`` says why it ended).
        seed: seeds the item numbering, initialisation, shuffling, dropout, negatives, the sample.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        progress: show a tqdm bar over epochs.
    """

    name = "sasrec"

    def __init__(
        self,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.6,
        max_len: int = 50,
        lr: float = 5e-4,
        weight_decay: float = 1e-8,
        batch_size: int = 512,
        epochs: int = 200,
        eval_every: int = 1,
        patience: int = 20,
        loss: str = "ce",
        num_negatives: int = 100,
        valid_users: int | None = None,
        time_limit: float | None = None,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        super().__init__(
            lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, seed=seed,
            device=device, progress=progress,
        )
        check_positive_ints(
            hidden=hidden, blocks=blocks, heads=heads, max_len=max_len, eval_every=eval_every,
            num_negatives=num_negatives,
        )
        if hidden % heads:
            raise ValueError(f"heads ({heads}) must divide hidden ({hidden})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if valid_users is not None and valid_users < 1:
            raise ValueError(f"valid_users must be positive or None, got {valid_users!r}")
        if time_limit is not None and time_limit <= 0:
            raise ValueError(f"time_limit must be positive or None, got {time_limit!r}")
        self.hidden = hidden
        self.blocks = blocks
        self.heads = heads
        self.dropout = float(dropout)
        self.max_len = max_len
        self.weight_decay = float(weight_decay)
        self.eval_every = eval_every
        self.loss = loss
        self.num_negatives = num_negatives
        self.valid_users = valid_users
        self.time_limit = time_limit

    def _new_net(self) -> SASRecNet:
        return SASRecNet(
            len(self.items_), self.hidden, self.blocks, self.heads, self.dropout, self.max_len
        )

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, split: Split) -> Self:
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        catalogue = split.data.items.index.astype(str).to_numpy(dtype=object)
        self.items_: np.ndarray = catalogue[rng.permutation(len(catalogue))]
        self.histories_: dict[str, dict[str, list[str]]] = {s: split.history(s) for s in STAGES}
        self._keep_item_table(split)
        self._build_index()
        cols = self._position.get_indexer(split.train["item_id"])
        self.counts_: np.ndarray = np.bincount(cols, minlength=len(self.items_)).astype(np.float32)

        # Item numbers are positions + 1 (0 = padding). The training sequences are the "valid"
        # histories, already looked up as columns in one call by _build_index (a lookup per user
        # costs milliseconds: over an hour at 10^6 users).
        sequences = [cols + 1 for cols in self._seen["valid"].values()]
        inputs, targets = self._examples(sequences)

        sample = valid_sample(split, self.valid_users, rng)

        # torch draws the initialisation, shuffling, dropout and negatives
        with self._seeded() as device:
            self.net_ = self._new_net().to(device)
            self._train(split, torch.from_numpy(inputs), torch.from_numpy(targets), sample)
        self.fit_info_["fit_seconds"] = round(time.perf_counter() - start, 2)
        return self

    def _examples(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Training rows: inputs and targets (U, L), 0 where there is no example.

        The window holds each user's last max_len + 1 items; a target counts only where its
        input is a real item.
        """
        window = _left_pad(sequences, self.max_len + 1)  # (U, L + 1)
        inputs = window[:, :-1]  # (U, L)
        targets = np.where(inputs > 0, window[:, 1:], 0)  # (U, L)
        useful = (targets > 0).any(axis=1)  # one-item users teach nothing
        return inputs[useful], targets[useful]

    def _batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch of training rows (on the CPU): packed, then on the device."""
        device = self.net_.item_emb.weight.device
        packed = [t.to(device) for t in pack(inputs, targets)]
        items, packed_targets, positions, segments = packed
        return sequence_loss(
            self.net_, items, packed_targets, self.loss, self.num_negatives, positions, segments,
            self._cross_entropy,
        )

    def _train(
        self, split: Split, inputs: torch.Tensor, targets: torch.Tensor, sample: list[str]
    ) -> None:
        net = self.net_
        self._cross_entropy = SoftmaxCrossEntropy()
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        def batch_loss(batch: torch.Tensor) -> tuple[torch.Tensor, int]:
            y = targets[batch]  # (B, L)
            return self._batch_loss(inputs[batch], y), int((y > 0).sum())

        def train_epoch() -> float:  # a mean over target positions
            return self._minibatch_epoch(len(inputs), batch_loss, optimiser)

        validate = (lambda: self._valid_ndcg(split, sample)) if sample else None
        training = self._train_epochs(
            train_epoch, validate, "NDCG@10", optimiser=optimiser, eval_every=self.eval_every,
            time_limit=self.time_limit,
        )
        del self._cross_entropy  # its buffer holds (batch positions x items) floats
        self.fit_info_ = {
            **training.fit_info(),
            "train_seconds_per_epoch": round(float(np.mean(training.train_seconds)), 3),
        }

    # -- prediction ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _scores(self, users: list[str], seen: list[np.ndarray]) -> np.ndarray:
        """Every item scored by the state after the newest item of the history."""
        self.net_.eval()
        device = self.net_.item_emb.weight.device
        # seen: columns; item number = column + 1
        warm = torch.tensor([len(s) > 0 for s in seen], dtype=torch.bool, device=device)  # (B,)
        # (B, n_items); users without history keep the popularity counts (cold start).
        scores = torch.from_numpy(self.counts_).to(device).repeat(len(users), 1)
        if warm.any():
            seqs = torch.from_numpy(_left_pad([s + 1 for s in seen], self.max_len)).to(device)
            last = self.net_(seqs[warm])[:, -1]  # (B_warm, d) state after the newest item
            scores[warm] = last @ self.net_.item_table().T
        return scores.cpu().numpy()

    # -- persistence: the popularity counts besides TorchRecommender's own ---------------------
    def _extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {"counts": torch.from_numpy(self.counts_)}

    def _restore_extra(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.counts_ = tensors.pop("counts").numpy()


def _left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """(U, length) int64 array of the last ``length`` entries of each sequence, zeros in front."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    kept = np.array([min(len(s), length) for s in sequences], dtype=np.int64)  # (U,)
    rows = np.repeat(np.arange(len(sequences)), kept)
    # Column of each kept entry: rows end at the last column, so row r starts at length - kept[r].
    offsets = np.cumsum(kept) - kept
    cols = np.arange(len(rows)) - offsets[rows] + length - kept[rows]
    tails = (s[len(s) - n :] for s, n in zip(sequences, kept))
    out[rows, cols] = np.concatenate([_NO_ITEMS, *tails])
    return out


__all__ = ["LOSSES", "SASRec", "SASRecBlock", "SASRecNet", "pack", "SoftmaxCrossEntropy", "sequence_loss"]
