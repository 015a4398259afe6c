"""Token ids for the tiny fixtures' tests (their vocabulary is 96; ids below 3 are special)."""

import torch


def ids_for(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 96, (batch, n), generator=torch.Generator().manual_seed(seed))
