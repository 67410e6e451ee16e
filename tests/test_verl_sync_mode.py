"""``rhythm_grpo`` is verl's sync trainer wherever verl decides by the mode's name (issue 16, item 2).

verl 0.9 tests ``trainer_mode == "sync"`` in ``PPOTrainer``: the replay buffer it builds, the
dataloader's ``gen_batch_size``, what ``_save_checkpoint`` writes (TransferQueue state or not),
what ``_load_checkpoint`` restores and whether ``_reissue_inflight_prompts`` re-issues prompts.
tests/verl_sync_run.py runs those methods of verl's own trainer classes for ``sync``,
``rhythm_grpo`` and ``colocate_async`` (a control: it must differ from sync on each point, so the
comparison can see a difference) with a local Ray cluster and TransferQueue, and this test
compares the modes. Only the actor worker group and the agent loop manager are stand-ins (their
checkpoint/generate calls are recorded; they do not depend on the mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")
import torch  # noqa: E402
from test_verl_loop import WORKER_ENV, write_dataset  # noqa: E402
from verl_models import tiny_model  # noqa: E402

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
MODE = "rhythm_grpo"


@pytest.fixture(scope="module")
def modes(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("verl_sync_mode")
    model = tiny_model(work / "model")
    data = write_dataset(work / "train.parquet")
    overrides = [
        f"+trainer.v1.{MODE}.strategy=coupled",
        f"+trainer.v1.{MODE}.q=0.3",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.strategy=fsdp2",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data}",
        f"data.val_files={data}",
        "data.train_batch_size=2",
        "data.max_prompt_length=32",
        "data.dataloader_num_workers=0",
        "data.shuffle=false",
        "actor_rollout_ref.rollout.n=2",
        "trainer.save_freq=1",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]
    (work / "spec.json").write_text(json.dumps(dict(work=str(work), overrides=overrides)))
    env = dict(
        os.environ,
        **WORKER_ENV,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, str(TESTS / "verl_sync_run.py"), str(work / "spec.json"), str(work / "out.pt")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=work)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return torch.load(work / "out.pt", weights_only=False)


def test_the_mode_runs_verls_sync_code_paths(modes):
    sync, rhythm, control = modes["sync"], modes[MODE], modes["colocate_async"]
    assert rhythm["trainer_cls"] == "RhythmPPOTrainer" and sync["trainer_cls"] == "PPOTrainerSync"
    assert rhythm["trainer_mode"] == "sync" and control["trainer_mode"] == "colocate_async"
    # every point decided by the mode's name is the sync trainer's, and the control differs on each
    for key in (
        "replay_buffer",
        "buffer_settings",
        "buffer_behaviour",
        "gen_batch_size",
        "dataloader_batch_size",
        "checkpoint_files",
        "resumed_global_steps",
        "resumed_actor",
        "reissued",
        "regenerated",
        "next_indices",
        "resumed_next_indices",
    ):
        assert rhythm[key] == sync[key], key
    for key in ("replay_buffer", "buffer_behaviour", "gen_batch_size", "checkpoint_files", "reissued"):
        assert control[key] != sync[key], key


def test_replay_buffer_keeps_failed_groups(modes):
    rhythm, control = modes[MODE], modes["colocate_async"]
    assert rhythm["replay_buffer"] == "ReplayBuffer" and control["replay_buffer"] == "ReplayBufferAsync"
    behaviour = rhythm["buffer_behaviour"]
    assert behaviour["evicted_as_failed"] == [] and behaviour["sampleable"] == ["g0", "g1"]
    assert behaviour["sampled"] == ["g0_0_0", "g0_1_0", "g1_0_0"]  # the failed group's trajectory trains
    assert control["buffer_behaviour"]["evicted_as_failed"] == ["g1"]


def test_batch_sizes_are_not_forced_to_one(modes):
    rhythm, control = modes[MODE], modes["colocate_async"]
    assert rhythm["gen_batch_size"] is None and rhythm["dataloader_batch_size"] == 2  # train_batch_size
    assert rhythm["buffer_settings"]["gen_batch_size"] == 2
    assert control["gen_batch_size"] == 1 and control["dataloader_batch_size"] == 1
    assert rhythm["submitted"] == [[0, 1]]  # one dataloader fetch of the whole batch


def test_checkpoint_holds_no_transfer_queue_state(modes):
    rhythm, control = modes[MODE], modes["colocate_async"]
    assert rhythm["checkpoint_files"] == [
        "global_step_1/actor/actor_state",
        "global_step_1/data.pt",
        "latest_checkpointed_iteration.txt",
    ]
    assert any(f.startswith("global_step_1/transfer_queue/") for f in control["checkpoint_files"])


def test_head_refresh_state_is_the_only_addition_and_resumes(modes):
    sync, refresh = modes["sync"], modes["rhythm_grpo_refresh"]
    assert refresh["trainer_mode"] == "sync" and refresh["replay_buffer"] == "ReplayBuffer"
    for key in ("gen_batch_size", "dataloader_batch_size", "reissued", "regenerated", "resumed_next_indices"):
        assert refresh[key] == sync[key], key
    assert refresh["checkpoint_files"] == sorted(
        [*sync["checkpoint_files"], "global_step_1/rhythm_heads.json"]
    )
    assert (
        refresh["head_state_saved"]["spans"] and refresh["head_state_resumed"] == refresh["head_state_saved"]
    )
    assert refresh["resumed_global_steps"] == 1


def test_resume_continues_without_reissuing_prompts(modes):
    rhythm, control = modes[MODE], modes["colocate_async"]
    assert rhythm["resumed_global_steps"] == 1 and rhythm["resumed_actor"] == ["global_step_1/actor"]
    assert rhythm["reissued"] == 0 and rhythm["regenerated"] == []
    # the dataloader resumes where the checkpoint left it: the batch after the in-flight one
    assert rhythm["resumed_next_indices"] == rhythm["next_indices"] == [2, 3]
    assert control["reissued"] == 2 and control["regenerated"] == [
        [0, 1]
    ]  # async re-issues in-flight prompts
    # the mode's own state: its settings from trainer.v1.rhythm_grpo, the configured name kept
    settings, configured, sync_step = rhythm["rhythm"]
    assert (settings["strategy"], settings["q"], configured, sync_step) == ("coupled", 0.3, MODE, 1)
