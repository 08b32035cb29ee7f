import os

import torch

if not torch.cuda.is_available():
    # Triton runs on CPU only in its interpreter. The flag is read when triton is first imported, and other
    # tests import it indirectly (the sglang frontend does), so it is set here, before any test module loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")
