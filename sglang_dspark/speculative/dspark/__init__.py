"""DSpark drafter: KV-injected parallel backbone, Markov head, confidence head, checkpoint format."""

from sglang_dspark.speculative.dspark.checkpoint import load_drafter, save_drafter
from sglang_dspark.speculative.dspark.config import DSparkConfig
from sglang_dspark.speculative.dspark.drafter import DraftOutput, DSparkDrafter
from sglang_dspark.speculative.dspark.state import DrafterState

__all__ = ["DSparkConfig", "DSparkDrafter", "DraftOutput", "DrafterState", "load_drafter", "save_drafter"]
