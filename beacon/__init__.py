"""beacon: Activation Beacon on frozen Hugging Face LLMs — condense once, answer many times.

Public API:
    lm = beacon.load(name_or_path, device=..., dtype=..., **beacon_overrides)
    mem = lm.condense(input_ids, memory=None)
    nll = lm.nll(input_ids)
    out = lm.generate(prompt_ids, memory=mem, max_new_tokens=...)
    loss, n = lm.loss(input_ids)          # gradients on beacon parameters only
"""

from .config import BeaconConfig
from .engine import BeaconLM
from .loading import from_hf, load, save_pretrained
from .memory import Memory
from .windows import WindowState

__version__ = "0.1.0"

__all__ = ["BeaconConfig", "BeaconLM", "Memory", "WindowState", "from_hf", "load", "save_pretrained", "__version__"]
