"""A 2-layer toy model with NSAAttention learns a copy task on the CPU.

Each copied token is HALF + 1 = 21 positions back, beyond the window (w=8), so the loss can
only fall below chance through the compressed and selected branches.
"""

from __future__ import annotations

import math
import time

import torch
from nsa_spec import NSAConfig
from nsa_torch import NSAAttention
from torch import nn

VOCAB, HALF = 12, 20
STEPS = 100
CONFIG = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=4, window=8)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = NSAAttention(width, num_heads=4, num_kv_heads=2, config=CONFIG, phi="mlp")
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def copy_batch(generator: torch.Generator, batch: int) -> torch.Tensor:
    """[batch, 2 * HALF + 1]: random tokens, a separator (token 0), the same tokens again."""
    first = torch.randint(1, VOCAB, (batch, HALF), generator=generator)
    return torch.cat([first, torch.zeros(batch, 1, dtype=torch.long), first], dim=1)


def test_copy_task_loss_decreases(one_thread):
    torch.manual_seed(0)
    width = 32
    embed, head = nn.Embedding(VOCAB, width), nn.Linear(width, VOCAB)
    model = nn.ModuleList([embed, Block(width), Block(width), head])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    start = time.perf_counter()
    for _ in range(STEPS):
        seq = copy_batch(generator, 16)
        h = embed(seq[:, :-1])
        for block in model[1:3]:
            h = block(h)
        logits = head(h)[:, HALF:]  # predict the copied half from the separator on
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), seq[:, HALF + 1 :].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    chance = math.log(VOCAB - 1)
    assert last < 0.5 * chance < first, f"copy loss {first:.3f} -> {last:.3f} (chance {chance:.3f})"
    assert elapsed < 60, f"training took {elapsed:.1f} s"
