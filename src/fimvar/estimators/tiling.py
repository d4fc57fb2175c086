"""Tiles of per-input derivative tensors, so that the many elementwise passes over them run in
cache rather than in main memory (every sum is still over all inputs)."""

from __future__ import annotations

from collections.abc import Iterator

#: elements of one (rows, T, columns) tile of derivatives
TILE_ELEMENTS = 1 << 16


def tiles(n: int, width: int, columns: int, elements: int = TILE_ELEMENTS
          ) -> Iterator[tuple[slice, slice]]:
    """Row and column slices of an ``(n, width, columns)`` tensor, tiles of about ``elements``."""
    per_row = width * columns
    if per_row <= elements:
        rows, step = max(1, elements // per_row), columns
    else:
        rows, step = 1, max(1, elements // width)
    for r in range(0, n, rows):
        for c in range(0, columns, step):
            yield slice(r, min(n, r + rows)), slice(c, min(columns, c + step))


def row_tiles(n: int, per_row: int, elements: int = 1 << 18) -> Iterator[slice]:
    """Slices of rows such that ``per_row`` × their count stays near ``elements``."""
    step = max(1, elements // max(per_row, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))
