"""verl plugin entry: registers the ``rhythm_grpo`` trainer mode, without loading verl's trainer stack.

verl imports this module in every process that imports verl (Ray workers, reward and agent loop
workers, TransferQueue storage), through the ``verl.plugins`` entry point that ``attnrhythm[verl]``
installs (or explicitly with ``VERL_USE_EXTERNAL_MODULES=attnrhythm.integrations.verl.plugin``).
Most of those processes never pick a trainer, so the mode is registered only when verl's trainer
package ``verl.trainer.ppo.v1`` (where ``get_trainer_cls`` lives) is imported: a finder on
``sys.meta_path`` (Python's import hook) runs :func:`register_mode` right after that package has
loaded. If it is already loaded, the mode is registered at once.

If the plugin's trainer cannot be imported (a missing or clashing dependency), verl would only
say "Unknown trainer 'rhythm_grpo'"; instead the mode is registered as a trainer that fails with
the real import error in one line.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

from attnrhythm.errors import AttnRhythmError

TRAINERS = "verl.trainer.ppo.v1"
MODE = "rhythm_grpo"


def register_mode() -> None:
    """Register ``rhythm_grpo`` with verl (the real trainer, or one that reports why it cannot load)."""
    try:
        import attnrhythm.integrations.verl.trainer  # noqa: F401  (@register_trainer)
    except Exception as error:  # noqa: BLE001 - any import failure is reported to the user
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        _register_unavailable(
            f"trainer_mode={MODE} needs attnrhythm's verl plugin, which failed to import ({reason}): "
            "install it with pip install 'attnrhythm[verl]' in verl's environment"
        )


def _register_unavailable(message: str) -> None:
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, PPOTrainer, register_trainer

    if MODE in TRAINER_REGISTRY:
        return

    @register_trainer(MODE)
    class RhythmTrainerUnavailable(PPOTrainer):
        def __init__(self, config: object) -> None:
            raise AttnRhythmError(message)

        def on_step_end(self) -> None:  # abstract in verl
            return None

        def on_sample_end(self) -> None:
            return None


class _Loader(importlib.abc.Loader):
    """verl's own loader for the trainer package, then :func:`register_mode`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        register_mode()


class _AfterTrainers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of ``verl.trainer.ppo.v1`` once, then steps aside."""

    def find_spec(
        self, fullname: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRAINERS:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


if TRAINERS in sys.modules:
    register_mode()
elif not any(isinstance(finder, _AfterTrainers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterTrainers())
