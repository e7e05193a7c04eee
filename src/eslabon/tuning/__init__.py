"""Fine-tuning, offline: ``eslabon tune`` teaches one step of a chain to a local model (a LoRA
adapter trained with peft on the prompts the chain sends), or writes those prompts in a cloud
provider's fine-tuning format. docs/tuning.md.

Modules: :mod:`~eslabon.tuning.data` (rows and rendering), :mod:`~eslabon.tuning.train` (the
training loop), :mod:`~eslabon.tuning.export` (OpenAI and Gemini formats),
:mod:`~eslabon.tuning.tune` (the whole run and what it writes). Nothing here imports torch
until a model is trained.
"""

from eslabon.tuning.export import FORMATS, write_export
from eslabon.tuning.train import Settings
from eslabon.tuning.tune import Source, Tuned, collect_pairs, tune

__all__ = ["FORMATS", "Settings", "Source", "Tuned", "collect_pairs", "tune", "write_export"]
