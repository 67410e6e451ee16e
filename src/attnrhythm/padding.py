"""Left-padding a batch of token id lists for one forward (the layout decoders expect)."""

from __future__ import annotations

import torch


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids), each (B, max length), rows aligned on the right.

    Position ids count the real tokens of each row from 0 (padding gets 0), so a padded row
    sees the positions it would see alone.
    """
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, length - len(row) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids, mask, position_ids
