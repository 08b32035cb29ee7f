"""What the HTTP routes share, kept on `app.state.server` (no module-level mutable state)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from sglang_dspark.managers.io_struct import SchedulerInfo
from sglang_dspark.managers.metrics import ServerMetrics
from sglang_dspark.managers.scheduler_client import SchedulerClient
from sglang_dspark.managers.tokenizer_manager import TokenizerManager
from sglang_dspark.server_args import ServerArgs


@dataclass
class ServerState:
    server_args: ServerArgs
    model_path: str
    tokenizer_path: str
    served_model_name: str
    tokenizer_manager: TokenizerManager
    client: SchedulerClient
    metrics: ServerMetrics | None
    created: int  # unix time the server started (OpenAI's `created` of the model)

    @property
    def info(self) -> SchedulerInfo:
        return self.client.info

    @property
    def max_sequence_len(self) -> int:
        """Prompt + completion tokens one request may have."""
        return min(self.info.context_len, self.info.max_total_tokens)


def server_state(request: Request) -> ServerState:
    return request.app.state.server
