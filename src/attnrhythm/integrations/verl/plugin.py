"""verl plugin entry: importing this registers the ``rhythm_grpo`` trainer mode.

verl imports it in every process that imports verl, through the ``verl.plugins`` entry point that
``attnrhythm[verl]`` installs (or explicitly with
``VERL_USE_EXTERNAL_MODULES=attnrhythm.integrations.verl.plugin``).
"""

from __future__ import annotations

from attnrhythm.integrations.verl.trainer import MODE, RhythmPPOTrainer  # noqa: F401  (registers the mode)
from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker  # noqa: F401
