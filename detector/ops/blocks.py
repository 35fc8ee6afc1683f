"""How many rows of a large element-wise computation to process at a time.

On the CPU a block is 2^18 elements (1 MiB per float32 temporary): the passes run in cache and
their temporaries take a few MiB instead of several copies of a [rows, columns] matrix. On a GPU
a block is 2^22 elements, so that the work stays a handful of kernel launches.
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = {"cpu": 1 << 18}  # by device type
OTHER_DEVICE_BLOCK_ELEMENTS = 1 << 22


def rows_per_block(device: torch.device, row_elements: int, block_elements: int | None = None) -> int:
    """Rows of `row_elements` elements each that make one block on `device`, or of `block_elements`
    elements when given (at least 1 row)."""
    block_elements = block_elements or BLOCK_ELEMENTS.get(device.type, OTHER_DEVICE_BLOCK_ELEMENTS)
    return max(1, block_elements // max(row_elements, 1))
