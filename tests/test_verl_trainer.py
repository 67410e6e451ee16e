"""The verl trainer mode ``rhythm_grpo``: registration, loading, settings and the worker it picks."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")
import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.integrations.verl.trainer import MODE, RhythmPPOTrainer, rhythm_settings  # noqa: E402
from attnrhythm.integrations.verl.worker import RhythmActorRolloutRefWorker  # noqa: E402

SRC = Path(__file__).parent.parent / "src"


def verl_config(*overrides: str):
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=list(overrides))


def _fresh_verl(code: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        VERL_USE_EXTERNAL_PLUGINS="none",
        VERL_USE_EXTERNAL_MODULES="attnrhythm.integrations.verl.plugin",
        PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_mode_is_registered_with_verl():
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls

    assert MODE == "rhythm_grpo"
    assert get_trainer_cls(MODE) is RhythmPPOTrainer
    assert issubclass(RhythmPPOTrainer, PPOTrainerSync)


def test_plugin_entry_point_targets_the_plugin_module():
    found = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert found.get("attnrhythm") == "attnrhythm.integrations.verl.plugin"


def test_external_modules_variable_registers_the_mode_in_a_fresh_process():
    # entry points off: only VERL_USE_EXTERNAL_MODULES loads the plugin, as verl does in each worker
    code = f"from verl.trainer.ppo.v1 import get_trainer_cls; print(get_trainer_cls({MODE!r}).__name__)"
    done = _fresh_verl(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "RhythmPPOTrainer"


def test_settings_come_from_the_modes_section():
    config = verl_config(
        f"trainer.v1.trainer_mode={MODE}",
        f"+trainer.v1.{MODE}.strategy=global",
        f"+trainer.v1.{MODE}.q=0.3",
        f"+trainer.v1.{MODE}.fai_horizon=5:end",
        f"+trainer.v1.{MODE}.parameter_sync_step=1",  # verl's own key in the same section
    )
    settings = rhythm_settings(config)
    assert (settings.strategy, settings.q, settings.fai_horizon) == ("global", 0.3, (5, None))
    assert rhythm_settings(verl_config()).strategy == "coupled"  # defaults: docs/method.md's rhythm credit


def test_bad_settings_fail_in_one_line():
    with pytest.raises(AttnRhythmError, match=r"unknown rhythm credit setting.*stratgy") as err:
        rhythm_settings(verl_config(f"+trainer.v1.{MODE}.stratgy=coupled"))
    assert "\n" not in str(err.value)
    with pytest.raises(AttnRhythmError, match="unknown credit strategy"):
        rhythm_settings(verl_config(f"+trainer.v1.{MODE}.strategy=louder"))
    refresh = rhythm_settings(verl_config(f"+trainer.v1.{MODE}.heads=refresh:20"))
    assert refresh.analysis_config().heads_refresh == 20  # head sets that follow training, in verl too
    with pytest.raises(AttnRhythmError, match="refresh") as err:
        rhythm_settings(verl_config(f"+trainer.v1.{MODE}.heads=refresh:0"))
    assert "\n" not in str(err.value)


def test_credit_mass_and_sign_settings():
    settings = rhythm_settings(
        verl_config(f"+trainer.v1.{MODE}.gamma_norm=mean", f"+trainer.v1.{MODE}.shape=both")
    )
    assert (settings.credit_config().gamma_norm, settings.credit_config().shape) == ("mean", "both")
    with pytest.raises(AttnRhythmError, match="bad shape"):
        rhythm_settings(verl_config(f"+trainer.v1.{MODE}.shape=negative"))


@pytest.mark.parametrize("use_kl_loss", [False, True])
def test_the_actor_role_runs_the_rhythm_worker(use_kl_loss):
    config = verl_config(
        f"trainer.v1.trainer_mode={MODE}",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.strategy=fsdp2",
        f"actor_rollout_ref.actor.use_kl_loss={use_kl_loss}",
    )
    trainer = object.__new__(RhythmPPOTrainer)  # only the worker mapping: no Ray, no GPUs
    trainer.config = config
    trainer._init_resource_pool_mgr()
    from verl.trainer.ppo.utils import Role

    expected_role = Role.ActorRolloutRef if use_kl_loss else Role.ActorRollout  # reference inside the actor
    actors = {role: cls.__ray_actor_class__ for role, cls in trainer.role_worker_mapping.items()}
    assert actors == {expected_role: RhythmActorRolloutRefWorker}
    assert hasattr(RhythmActorRolloutRefWorker, "compute_rhythm_credit")


def test_example_config_composes_to_the_rhythm_mode():
    example = Path(__file__).parent.parent / "examples" / "verl"
    with initialize_config_dir(config_dir=str(example), version_base=None):
        config = compose("rhythm_grpo", overrides=["actor_rollout_ref.model.path=/models/any"])
    assert config.trainer.v1.trainer_mode == MODE and config.algorithm.adv_estimator == "grpo"
    settings = rhythm_settings(config)
    got = (settings.strategy, settings.q, settings.amp, settings.fai_horizon)
    assert got == ("coupled", 0.4, 1.5, (10, 50))
    # verl's own defaults are still there under the example's values
    actor = config.actor_rollout_ref.actor
    assert actor.strategy == "fsdp2" and "ppo_epochs" in actor


def test_importing_verl_leaves_the_trainer_stack_unloaded():
    # the plugin registers the mode only when verl's trainer package loads
    code = (
        "import sys, verl\n"
        "print('attnrhythm.integrations.verl.plugin' in sys.modules, "
        "'verl.trainer.ppo.v1' in sys.modules, 'attnrhythm.integrations.verl.worker' in sys.modules)\n"
        f"from verl.trainer.ppo.v1 import get_trainer_cls\nprint(get_trainer_cls({MODE!r}).__name__)"
    )
    done = _fresh_verl(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["True False False", "RhythmPPOTrainer"]


def test_a_plugin_that_cannot_import_says_why_in_one_line():
    # the worker module made unimportable: verl would only say "Unknown trainer"
    code = (
        "import sys\nsys.modules['attnrhythm.integrations.verl.worker'] = None\nimport verl\n"
        f"from verl.trainer.ppo.v1 import get_trainer_cls\ntry:\n    get_trainer_cls({MODE!r})(None)\n"
        "except Exception as error:\n    print(type(error).__name__, '|', error)"
    )
    done = _fresh_verl(code)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("AttnRhythmError | trainer_mode=rhythm_grpo needs attnrhythm's verl plugin")
    assert "ModuleNotFoundError" in line or "ImportError" in line
