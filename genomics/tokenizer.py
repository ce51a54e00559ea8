"""Character tokenizer for DNA: ACGTN plus specials, with a complement map for RC-equivariant models.

Vocabulary (ids are fixed so that checkpoints stay portable)::

    0 [PAD]  1 [MASK]  2 [CLS]  3 [UNK]  4 A  5 C  6 G  7 T  8 N

* Soft-masked lowercase counts as its base (``acgt`` -> ``ACGT``).
* IUPAC ambiguity codes (R Y S W K M B D H V, and U is read as T) map to ``N``.
* Any other byte maps to ``[UNK]``.

``complement_map[i]`` is the id of the complement of token ``i`` (A<->T, C<->G; N and the
specials map to themselves), so ``rc_tokens(x) = complement_map[x].flip(-1)``.
"""
from __future__ import annotations

import numpy as np
import torch

SPECIALS = ("[PAD]", "[MASK]", "[CLS]", "[UNK]")
BASES = ("A", "C", "G", "T", "N")
VOCAB = SPECIALS + BASES
PAD_ID, MASK_ID, CLS_ID, UNK_ID = 0, 1, 2, 3
A_ID, C_ID, G_ID, T_ID, N_ID = 4, 5, 6, 7, 8
NUCLEOTIDE_IDS = (A_ID, C_ID, G_ID, T_ID)
IUPAC_AMBIGUOUS = "RYSWKMBDHV"

_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def _byte_table() -> np.ndarray:
    table = np.full(256, UNK_ID, dtype=np.int64)
    for ch in IUPAC_AMBIGUOUS + "N":
        table[ord(ch)] = table[ord(ch.lower())] = N_ID
    for ch, tid in zip("ACGT", (A_ID, C_ID, G_ID, T_ID)):
        table[ord(ch)] = table[ord(ch.lower())] = tid
    table[ord("U")] = table[ord("u")] = T_ID
    return table


class DNATokenizer:
    """Maps DNA strings to token ids and back; see the module docstring for the vocabulary."""

    vocab = VOCAB
    vocab_size = len(VOCAB)
    pad_id, mask_id, cls_id, unk_id, n_id = PAD_ID, MASK_ID, CLS_ID, UNK_ID, N_ID

    def __init__(self) -> None:
        self._table = _byte_table()
        comp = list(range(self.vocab_size))
        for base, other in _COMPLEMENT.items():
            comp[VOCAB.index(base)] = VOCAB.index(other)
        self.complement_map: list[int] = comp
        self._comp_np = np.asarray(comp, dtype=np.int64)
        self._comp_t = torch.tensor(comp, dtype=torch.long)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, seq: str | bytes) -> np.ndarray:
        """Encode a sequence into an int64 array of token ids (no specials added)."""
        raw = seq.encode("ascii", "replace") if isinstance(seq, str) else bytes(seq)
        return self._table[np.frombuffer(raw, dtype=np.uint8)]

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(VOCAB[i] for i in ids)

    # ------------------------------------------------------------------ reverse complement
    def complement(self, ids):
        """Complement each token (A<->T, C<->G); works on numpy arrays and torch tensors."""
        if isinstance(ids, torch.Tensor):
            return self._comp_t.to(ids.device)[ids]
        return self._comp_np[np.asarray(ids)]

    def rc_tokens(self, ids):
        """Reverse complement along the last axis: complement, then flip."""
        comp = self.complement(ids)
        if isinstance(comp, torch.Tensor):
            return comp.flip(-1)
        return comp[..., ::-1].copy()  # a copy: ascontiguousarray keeps the negative stride of a length-1 view

    def n_fraction(self, ids: np.ndarray) -> float:
        """Fraction of positions that are N (ambiguous) or UNK."""
        ids = np.asarray(ids)
        return float(((ids == N_ID) | (ids == UNK_ID)).mean()) if ids.size else 1.0


def rc_tokens(ids: torch.Tensor) -> torch.Tensor:
    """Reverse complement of a (..., L) tensor of token ids."""
    return DNATokenizer().rc_tokens(ids)
