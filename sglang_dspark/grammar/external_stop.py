"""Grammar objects whose library matcher is never shown a stop token.

outlines-core's Guide has no transition for EOS, and an llguidance matcher that has stopped
("no extension") refuses EOS (and would enter its sticky error state on other refusals). So for both,
a stop token is accepted here, on the side, whenever the matcher is in an accepting state; the
matcher itself only ever sees grammar tokens.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch

from sglang_dspark.grammar.base import BaseGrammarObject


class ExternalStopGrammar(BaseGrammarObject):
    def __init__(self, stop_token_ids: Sequence[int]) -> None:
        self.stop_token_ids = list(stop_token_ids)
        self.terminated = False

    # ---- what a library matcher provides -------------------------------------------------------

    @abstractmethod
    def _accept(self, token: int) -> bool:
        """Advance the matcher by a grammar token; False (state unchanged) if not allowed."""

    @abstractmethod
    def _rollback(self, num_tokens: int) -> None: ...

    @abstractmethod
    def _is_accepting(self) -> bool:
        """The text so far is a complete match (the grammar may end here)."""

    @abstractmethod
    def _fill(self, bitmask: torch.Tensor, row: int) -> None:
        """The mask into bitmask[row], stop-token bits set where the grammar may end."""

    # ---- the interface ---------------------------------------------------------------------------

    def accept_token(self, token: int) -> bool:
        if self.terminated:
            return False
        if token in self.stop_token_ids:
            self.terminated = self._is_accepting()
            return self.terminated
        return self._accept(token)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens and self.terminated:
            self.terminated = False
            num_tokens -= 1
        if num_tokens:
            self._rollback(num_tokens)

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        if self.terminated:
            bitmask[row].zero_()
        else:
            self._fill(bitmask, row)

    def is_terminated(self) -> bool:
        return self.terminated
