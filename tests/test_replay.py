"""Replay (gvm.replay): which samples the buffer keeps, how long, what it hands back for training
(the engine's log-probs of the policy that generated them, for the mismatch weights), and that it
survives a checkpoint's JSON. The loop with replay on, killed and resumed, is tests/test_resume.py."""
import json

import numpy as np
import pytest

from gvm.engines.base import Completion
from gvm.packing import Sample
from gvm.replay import ReplayBuffer, joined
from gvm.stages import TrainData


def iteration_data(rng: np.random.Generator, tag: str, size: int) -> TrainData:
    """`size` random samples, about a third with advantage 0 (scalar or per token)."""
    data = TrainData([], [], [], [])
    for j in range(size):
        length = int(rng.integers(1, 6))
        zero = rng.random() < 1 / 3
        advantage = 0.0 if zero else float(rng.normal())
        if rng.random() < 0.3:      # a per-token advantage: kept when any token's is non-zero
            advantage = [0.0] * length if zero else [0.0] * (length - 1) + [advantage or 1.0]
        ids = rng.integers(0, 50, size=length).tolist()
        data.samples.append(Sample(sample_id=f"{tag}/0/{j}", prompt_ids=[1, 2], response_ids=ids, advantage=advantage))
        data.completions.append(Completion(token_ids=ids, text="", logprobs=rng.normal(size=length).tolist(),
                                           finish_reason="stop"))
        data.owners.append(int(rng.integers(0, 4)))
        data.rewards.append(float(not zero))
    data.weights = [1.0] * size
    return data


def carries(sample: Sample) -> bool:
    return bool(np.any(np.asarray(sample.advantage) != 0))


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_keeps_the_gradient_carrying_samples_of_the_last_iterations(iterations, seed):
    rng = np.random.default_rng(seed)
    buffer, history = ReplayBuffer(iterations), []
    for it in range(5):
        assert [s.sample_id for s in buffer.data().samples] == [
            f"replay/{s.sample_id}" for d in history[-iterations:] for s in d.samples if carries(s)]
        history.append(iteration_data(rng, f"{it}/main", int(rng.integers(0, 9))))
        buffer.add(history[-1])
    kept = [(s, c) for d in history[-iterations:] for s, c in zip(d.samples, d.completions) if carries(s)]
    out = buffer.data()
    assert len(buffer) == len(out.samples) == len(kept)
    for (sample, completion), back, back_completion in zip(kept, out.samples, out.completions):
        assert list(back.response_ids) == list(sample.response_ids) and back.advantage == sample.advantage
        assert back_completion.logprobs == completion.logprobs        # the generating policy's, for TIS
        assert back.old_logp is None                                  # pi_old is the trainer's, computed now
    assert out.owners == [-1] * len(kept) and out.weights == [1.0] * len(kept)


def test_off_keeps_nothing_and_negative_is_refused(seed):
    buffer = ReplayBuffer(0)
    buffer.add(iteration_data(np.random.default_rng(seed), "0/main", 6))
    assert len(buffer) == 0 and buffer.data().samples == [] and buffer.state_dict() == []
    with pytest.raises(ValueError, match="replay iterations must be >= 0"):
        ReplayBuffer(-1)


def test_state_survives_json_and_a_shorter_buffer_takes_the_newest(seed):
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(3)
    for it in range(3):
        buffer.add(iteration_data(rng, f"{it}/main", 7))
    state = json.loads(json.dumps(buffer.state_dict()))
    again = ReplayBuffer(3)
    again.load_state_dict(state)
    assert again.data() == buffer.data()
    newest = ReplayBuffer(1)
    newest.load_state_dict(state)
    assert newest.state_dict() == state[-1:]


def test_joined_keeps_both_in_order(seed):
    rng = np.random.default_rng(seed)
    first, second = iteration_data(rng, "a", 3), iteration_data(rng, "b", 4)
    both = joined(first, second)
    assert [s.sample_id for s in both.samples] == [s.sample_id for s in first.samples + second.samples]
    assert both.owners == first.owners + second.owners and both.rewards == first.rewards + second.rewards
    assert len(both.completions) == len(both.weights) == 7
