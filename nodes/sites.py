"""Attention call sites: which block of the model made a call, so stats and policies can be kept per site.

A site is (block_type, block_index, call, Lq, Lk). Block identity comes from transformer_options, which DiT models
update in place as they walk their blocks ("block_type"/"block_index"; UNets write "block" = (name, index)).
`call` numbers the calls one block makes within one model evaluation (Wan: self-attention 0, cross-attention 1),
so calls from models that report no blocks at all still get distinct sites. ComfyUI builds a fresh
transformer_options dict per model evaluation; a new dict restarts the numbering.
"""
from __future__ import annotations

from typing import NamedTuple

from .block_spec import REFINER


class SiteKey(NamedTuple):
    block_type: str | None
    block_index: int | None
    call: int
    len_q: int
    len_k: int

    @property
    def block_label(self) -> str:
        name = REFINER if self.block_type is None else str(self.block_type)
        return name if self.block_index is None else f"{name}:{self.block_index}"

    def label(self) -> str:
        call = f"#{self.call}" if self.call else ""
        return f"{self.block_label}{call} (Lq {self.len_q}, Lk {self.len_k})"


def block_identity(transformer_options: dict) -> tuple[str | None, int | None]:
    block_type = transformer_options.get("block_type")
    block_index = transformer_options.get("block_index")
    if block_type is None:
        block = transformer_options.get("block")  # UNets: ("input" | "middle" | "output", index)
        if isinstance(block, (tuple, list)) and len(block) == 2:
            block_type, block_index = block
    if block_type is not None:
        block_type = str(block_type)
    if block_index is not None:
        try:
            block_index = int(block_index)
        except (TypeError, ValueError):
            block_index = None
    return block_type, block_index


class SiteTracker:
    def __init__(self):
        self._options = None  # the transformer_options dict of the evaluation being numbered
        self._calls: dict = {}

    def key(self, transformer_options: dict, len_q: int, len_k: int) -> SiteKey:
        if transformer_options is not self._options:
            self._options = transformer_options
            self._calls = {}
        block = block_identity(transformer_options)
        call = self._calls.get(block, 0)
        self._calls[block] = call + 1
        return SiteKey(block[0], block[1], call, len_q, len_k)

    def forget(self) -> None:
        self._options = None
        self._calls = {}
