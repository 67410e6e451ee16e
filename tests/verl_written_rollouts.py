"""Written rollouts for verl's agent loop, for tests only (the one part of verl's loop replaced on CPU).

Rollout generation needs vLLM or SGLang on GPUs. :class:`WrittenRolloutLoop` is a verl agent loop
(``AgentLoopBase``, registered through verl's ``agent_loop_config_path``) whose ``run`` returns a
written ``AgentLoopOutput`` instead of asking an inference server: everything around it is verl's
own (``AgentLoopManagerTQ``, ``AgentLoopWorkerTQ``, which puts each sample into TransferQueue with
its tags, the replay buffer that samples them). The rollouts are a pure function of
(dataset index, session id), so the test can rebuild them:

* a tool call inside a response: tokens of ``TOOL`` spans come back with ``response_mask`` 0;
* a 1-token response (not analysable: gamma stays 1);
* rewards that differ inside each group, so GRPO's advantages are not all zero.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

# rollout.name=written: verl's registry of rollout backends; no replica of it is ever started (the
# trainer runs without colocated replicas), so the base class stands for the backend's type
RolloutReplicaRegistry.register("written", lambda: RolloutReplica)

VOCAB = 97
ONE_TOKEN = (1, 1)  # (index, session): a 1-token response
TOOL = {(0, 0): (3, 7), (2, 1): (5, 9)}  # (index, session): tool output span inside the response


def written_rollout(index: int, session: int) -> dict[str, Any]:
    """prompt ids, response ids, response mask and reward of one written rollout."""
    gen = torch.Generator().manual_seed(7919 * index + 104729 * session + 1)
    plen = 4 + (index * 3 + session) % 5
    rlen = 1 if (index, session) == ONE_TOKEN else 9 + (index * 5 + session * 7) % 11
    prompt = torch.randint(3, VOCAB, (plen,), generator=gen).tolist()
    response = torch.randint(3, VOCAB, (rlen,), generator=gen).tolist()
    mask = [1] * rlen
    if (index, session) in TOOL:
        start, stop = TOOL[(index, session)]
        mask[start:stop] = [0] * (stop - start)
    reward = float((index + session) % 2)
    return dict(prompt_ids=prompt, response_ids=response, response_mask=mask, reward=reward)


class WrittenRolloutLoop(AgentLoopBase):
    """An agent loop that returns the written rollout of its prompt (no inference server)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        index = int(kwargs["index"])
        session = int(kwargs["session_id"])
        rollout = written_rollout(index, session)
        version = int(kwargs["global_steps"])
        return AgentLoopOutput(
            prompt_ids=rollout["prompt_ids"],
            response_ids=rollout["response_ids"],
            response_mask=rollout["response_mask"],
            reward_score=rollout["reward"],
            num_turns=3 if (index, session) in TOOL else 2,
            metrics=AgentLoopMetrics(),
            # the weights' version that "generated" it, as verl's server client records it
            extra_fields={"min_global_steps": version, "max_global_steps": version},
        )
