"""The Quality node's `keep_blocks` text, e.g. "double:0-2, single:37, refiner", parsed strictly.

Grammar: items separated by commas; an item is NAME, NAME:N or NAME:N-M (inclusive). NAME is the block_type that
ComfyUI writes into transformer_options ("double", "single", ...). "refiner" names calls made outside a block loop
(no block_type), e.g. HunyuanVideo's token refiner; it takes no index. Empty text selects nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

REFINER = "refiner"
EXAMPLE = "double:0-2, single:37, refiner"
_ITEM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\s*:\s*(\d+)(?:\s*-\s*(\d+))?)?")


class KeepBlocksSyntaxError(ValueError):
    """keep_blocks text that does not follow the grammar above."""


@dataclass(frozen=True)
class BlockRule:
    block_type: str | None  # None: calls outside a block loop ("refiner")
    first: int | None = None  # None: every block of this type
    last: int | None = None

    def matches(self, block_type: str | None, block_index: int | None) -> bool:
        if block_type != self.block_type:
            return False
        if self.first is None:
            return True
        return block_index is not None and self.first <= block_index <= self.last

    def __str__(self) -> str:
        name = REFINER if self.block_type is None else self.block_type
        if self.first is None:
            return name
        return f"{name}:{self.first}" if self.first == self.last else f"{name}:{self.first}-{self.last}"


@dataclass(frozen=True)
class BlockSelection:
    rules: tuple[BlockRule, ...] = ()

    def matching_rule(self, block_type: str | None, block_index: int | None) -> BlockRule | None:
        for rule in self.rules:
            if rule.matches(block_type, block_index):
                return rule
        return None

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __str__(self) -> str:
        return ", ".join(map(str, self.rules))


def parse_keep_blocks(text: str) -> BlockSelection:
    """Parse keep_blocks; raises KeepBlocksSyntaxError naming the bad item and showing an example."""
    if not isinstance(text, str):
        raise KeepBlocksSyntaxError(f"keep_blocks must be text, got {type(text).__name__}")
    if not text.strip():
        return BlockSelection()
    rules = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        match = _ITEM.fullmatch(item)
        if match is None:
            raise KeepBlocksSyntaxError(
                f"keep_blocks: cannot read item {position} ({item!r}) of {text!r}; "
                f"write NAME, NAME:N or NAME:N-M separated by commas, e.g. {EXAMPLE!r}")
        name, first, last = match.groups()
        if name == REFINER:
            if first is not None:
                raise KeepBlocksSyntaxError(
                    f"keep_blocks: item {position} ({item!r}): refiner calls have no block index; write just 'refiner'")
            rules.append(BlockRule(None))
            continue
        if first is None:
            rules.append(BlockRule(name))
            continue
        lo = int(first)
        hi = lo if last is None else int(last)
        if hi < lo:
            raise KeepBlocksSyntaxError(
                f"keep_blocks: item {position} ({item!r}): range end {hi} is below its start {lo}")
        rules.append(BlockRule(name, lo, hi))
    return BlockSelection(tuple(rules))
