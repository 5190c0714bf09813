"""The data set and model of the Hugging Face tests, shared by test_huggingface.py and
the torchrun script dist_hf.py (which imports it from its own directory)."""

from __future__ import annotations

import torch


class Tokens(torch.utils.data.Dataset):
    """Sequences of a simple rule (next token = token + 1 mod vocab) with noise."""

    def __init__(self, n=96, length=12, vocab=50, seed=0):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (start + torch.arange(length)) % vocab
        flip = torch.rand(n, length, generator=g) < 0.1
        self.ids[flip] = torch.randint(0, vocab, (int(flip.sum()),), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2():
    """A 2-layer GPT-2 of width 32 with dropout, built from a config (nothing downloaded)."""
    import transformers

    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2,
                                     n_head=2, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)
