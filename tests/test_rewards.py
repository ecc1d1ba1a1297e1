"""Bring your own reward (gvm.verify: verifier.reward): "exact", and user functions
function(completion, gold, row) -> float run in the verifier's worker processes under the same
per-item timeout. One that raises, hangs, or returns no number scores 0 and is counted by reason;
one that cannot be imported or called that way stops the run before any work."""
import textwrap

import pytest

from gvm.config import ConfigError, load_config
from gvm.verify import Verifier, VerifierConfig

REWARDS = textwrap.dedent('''
    import math, time

    def length_bonus(completion, gold, row):
        """A float reward: 1 for the right number in the box, minus a length penalty."""
        right = ("\\\\boxed{" + str(gold) + "}") in completion
        return (1.0 if right else 0.0) - 0.001 * len(completion) + row.get("bonus", 0.0)

    def raises(completion, gold, row):
        raise RuntimeError("a bug in the user's reward")

    def sleeps(completion, gold, row):
        time.sleep(3600)

    def a_string(completion, gold, row):
        return "1.0"

    def not_a_number(completion, gold, row):
        return math.nan

    def two_arguments(completion, gold):
        return 1.0
''')


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def test_user_rewards_that_fail_score_zero_within_the_timeout_counted_by_reason(reward_file):
    completions = ["so \\boxed{4}", "\\boxed{5}"]
    golds, rows = ["4", "4"], [{"answer": "4", "bonus": 0.5}, {"answer": "4"}]
    with Verifier(VerifierConfig(num_workers=2, timeout_s=1.0, kill_grace_s=0.5,
                                 reward=f"{reward_file}:length_bonus")) as verifier:
        rewards, reasons = verifier.score_with_reasons(completions, golds, rows)
    assert rewards == pytest.approx([1.0 - 0.001 * len(completions[0]) + 0.5, -0.001 * len(completions[1])])
    assert reasons == ["scored", "scored"]
    for name, reason in (("raises", "reward_error"), ("sleeps", "timeout"), ("a_string", "not_a_number"),
                         ("not_a_number", "not_a_number")):
        with Verifier(VerifierConfig(num_workers=1, timeout_s=1.0, kill_grace_s=0.5,
                                     reward=f"{reward_file}:{name}")) as verifier:
            rewards, reasons = verifier.score_with_reasons(completions, golds, rows)
            assert (rewards, reasons) == ([0.0, 0.0], [reason, reason]), name
            assert verifier.stats[reason] == 2


def test_a_reward_that_cannot_be_used_stops_the_run_before_any_work(reward_file, tmp_path):
    with pytest.raises(ConfigError, match=r"verifier.reward=.*cannot be imported: ModuleNotFoundError"):
        load_config(None, ["verifier.reward=no_such_package.rewards:score", f"run_root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"must take \(completion, gold, row\)"):
        load_config(None, [f"verifier.reward={reward_file}:two_arguments"])
    with pytest.raises(ConfigError, match=r"no such file"):
        load_config(None, [f"verifier.reward={tmp_path / 'missing.py'}:score"])
    with pytest.raises(ConfigError, match=r"expected one of \('math', 'exact'\)"):
        load_config(None, ["verifier.reward=mathh"])
    assert not (tmp_path / "default").exists()


def test_exact_is_normalised_string_equality():
    with Verifier(num_workers=0, reward="exact") as verifier:
        rewards = verifier.score(["\\boxed{ 1/2 }", "\\boxed{0.5}", "the answer is $X+1$", "nothing"],
                                 ["1/2", "1/2", ["x+1", "y"], "3"])
    assert rewards == [1.0, 0.0, 1.0, 0.0]       # no maths: 0.5 is not "1/2"
