"""Actor setups the rhythm credit cannot analyse are refused when the trainer is built, in one line.

Each refusal happens in ``RhythmPPOTrainer(config)``, before any Ray worker starts, and names the
setting to change: engines other than FSDP2, Ulysses sequence parallelism, FSDP2's CPU offload
policy / forward-only engines, and a TRL without ``AutoModelForCausalLMWithValueHead`` beside verl
(verl 0.9's FSDP engine imports it whenever TRL is importable; simulated with a fake ``trl``
package on the path of a fresh process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")
from test_verl_trainer import verl_config  # noqa: E402

from attnrhythm.errors import AttnRhythmError  # noqa: E402
from attnrhythm.integrations.verl.trainer import MODE, RhythmPPOTrainer  # noqa: E402

SRC = Path(__file__).parent.parent / "src"
ACTOR = "actor_rollout_ref.actor"
BASE = (f"trainer.v1.trainer_mode={MODE}", "algorithm.adv_estimator=grpo", f"{ACTOR}.strategy=fsdp2")


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (f"{ACTOR}.strategy=megatron", f"set {ACTOR}.strategy=fsdp2"),
        (f"{ACTOR}.strategy=fsdp", f"set {ACTOR}.strategy=fsdp2"),
        (f"{ACTOR}.ulysses_sequence_parallel_size=2", f"set {ACTOR}.ulysses_sequence_parallel_size=1"),
        (
            f"{ACTOR}.fsdp_config.ulysses_sequence_parallel_size=2",
            f"set {ACTOR}.fsdp_config.ulysses_sequence_parallel_size=1",
        ),
        (f"{ACTOR}.fsdp_config.offload_policy=true", f"set {ACTOR}.fsdp_config.offload_policy=false"),
        (f"{ACTOR}.fsdp_config.forward_only=true", f"set {ACTOR}.fsdp_config.forward_only=false"),
    ],
)
def test_unsupported_actor_setups_are_refused_at_trainer_init(override, says):
    with pytest.raises(AttnRhythmError) as err:
        RhythmPPOTrainer(verl_config(*BASE, override))
    message = str(err.value)
    assert "\n" not in message and says in message and override.split("=")[0] in message


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        (f"{ACTOR}.fsdp_config.param_offload=true", f"{ACTOR}.fsdp_config.optimizer_offload=true"),
        ("actor_rollout_ref.model.lora_rank=8",),
    ],
)
def test_supported_actor_setups_build_the_trainer(overrides):
    trainer = RhythmPPOTrainer(verl_config(*BASE, *overrides))
    assert trainer.trainer_mode == "sync"


def test_trl_beside_verl_without_the_value_head_fails_in_one_line(tmp_path):
    # a fresh process that finds a fake TRL 1.16 (no AutoModelForCausalLMWithValueHead) first on its
    # path; then the class is added to it, as an older TRL has it in trl.experimental.ppo
    package = tmp_path / "trl"
    (package / "experimental" / "ppo").mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "1.16.0"\n')
    (package / "experimental" / "__init__.py").write_text("")
    (package / "experimental" / "ppo" / "__init__.py").write_text("")
    meta = tmp_path / "trl-1.16.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: trl\nVersion: 1.16.0\n")
    code = (
        "import sys\nfrom test_verl_trainer import verl_config\n"
        "from verl.utils.import_utils import is_trl_available\n"
        "from attnrhythm.integrations.verl.trainer import RhythmPPOTrainer\n"
        f"config = verl_config(*{BASE!r})\n"
        "print('verl sees trl:', is_trl_available())\n"
        "def build():\n    try:\n        RhythmPPOTrainer(config)\n        print('built')\n"
        "    except Exception as error:\n        print(type(error).__name__, '|', error)\n"
        "build()\nimport trl.experimental.ppo as ppo\n"
        "ppo.AutoModelForCausalLMWithValueHead = type('AutoModelForCausalLMWithValueHead', (), {})\n"
        "build()\n"
    )
    tests = Path(__file__).parent
    env = dict(
        os.environ,
        VERL_USE_EXTERNAL_PLUGINS="none",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(tests), str(SRC), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen, refused, accepted = done.stdout.strip().splitlines()[-3:]
    assert seen == "verl sees trl: True"
    name, _, message = refused.partition(" | ")
    assert name == "AttnRhythmError"
    assert message.startswith("TRL 1.16.0 is installed beside verl") and "pip uninstall trl" in message
    assert accepted == "built"
