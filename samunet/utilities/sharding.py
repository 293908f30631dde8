"""A deterministic share of a work list for one of several processes or nodes (``--part/--num_parts``)."""

from __future__ import annotations


def shard(items, part: int = 0, num_parts: int = 1) -> list:
    """Items ``i`` (in sorted order) with ``i % num_parts == part``: a deterministic share for
    one of ``num_parts`` processes or nodes."""
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"--part {part} --num_parts {num_parts}: need num_parts >= 1 and 0 <= part < num_parts")
    return [c for i, c in enumerate(sorted(items)) if i % num_parts == part]
