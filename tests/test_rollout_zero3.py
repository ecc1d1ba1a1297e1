"""Weight sync from ZeRO-3 DeepSpeed training into in-process vLLM engines on two ranks (gloo,
CPU), launched with torchrun in a subprocess (tests/_rollout_worker.py): with a bare DeepSpeed
engine, once with one vLLM replica per rank (tp=1, data-parallel rollout) and once with one
replica over both ranks (tp=2); and from gvm's PolicyTrainer, checked against its own
`logprobs`. Fresh model weights and prompts each run (the seed is printed)."""
import json
import socket
import sys
from pathlib import Path

import pytest
from _seed import seed_for
from _tiny_runs import one_two_rank_vllm_group_at_a_time, run_process_group

pytest.importorskip("deepspeed")
pytest.importorskip("vllm")

from gvm.toy import build_tiny  # noqa: E402

WORKER = Path(__file__).with_name("_rollout_worker.py")
TP_SIZES = (1, 2)
SEED = seed_for(__name__)  # this module's seed (tests/_seed.py: replay with GVM_TEST_SEED)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    print(f"seed={SEED}")
    return build_tiny(tmp_path_factory.mktemp("zero3") / "tiny", seed=SEED)


def launch(model: Path, out: Path, *extra: str) -> None:
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), str(WORKER), "--model", str(model), "--out", str(out),
               "--seed", str(SEED), *extra]
    with one_two_rank_vllm_group_at_a_time():
        proc = run_process_group(command, timeout=600)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


@pytest.fixture(scope="module")
def results(model_dir) -> dict[tuple[int, int], dict]:
    """{(tp, rank): measurements} from one two-rank launch."""
    out = model_dir.parent / "out"
    launch(model_dir, out, "--tp", ",".join(map(str, TP_SIZES)))
    found = {}
    for tp in TP_SIZES:
        for rank in (0, 1):
            found[tp, rank] = json.loads((out / f"rank{rank}_tp{tp}.json").read_text())
    return found


@pytest.mark.parametrize("tp", TP_SIZES)
def test_engine_matches_the_updated_zero3_model(results, tp):
    for rank in (0, 1):
        r = results[tp, rank]
        assert r["replicas"] == 2 // tp
        assert r["max_logprob_diff_after"] < 1e-3, r["max_logprob_diff_after"]
        assert r["greedy_argmax_misses"] == 0
        assert all(r["outputs_moved"]), "outputs did not change after the optimizer step"
        assert r["still_partitioned"], "the sync left parameters gathered"
        assert r["process_group_alive"]


@pytest.mark.parametrize("tp", TP_SIZES)
def test_sync_holds_one_bucket_at_a_time(results, tp):
    for rank in (0, 1):
        r = results[tp, rank]
        assert len(r["buckets"]) > 5
        assert r["max_gathered_at_once"] <= max(r["bucket_bytes"], r["largest_param_bytes"])
        assert max(r["buckets"]) == r["max_gathered_at_once"]
        assert sum(r["buckets"]) == r["model_bytes"]
        for size in r["buckets"]:
            assert size <= r["bucket_bytes"] or size <= r["largest_param_bytes"]


def test_replicas_sample_independently_and_tp_ranks_alike(results):
    # tp=1: two replicas, seeded per replica: the same prompt gets different samples.
    dp = results[1, 0]["samples_by_rank"]
    assert dp[0] != dp[1]
    # tp=2: both ranks are one replica and must draw exactly the same tokens.
    tp = results[2, 0]["samples_by_rank"]
    assert tp[0] == tp[1]


def test_replicas_handle_different_loads(results):
    """Rank 1 of the tp=1 run had one prompt more than rank 0 (vLLM steps replicas in lockstep),
    then no prompts at all while rank 0 decoded, then the other way round with zero counts."""
    assert results[1, 0]["num_prompts"] + 1 == results[1, 1]["num_prompts"]
    assert len(results[1, 1]["outputs_moved"]) == results[1, 1]["num_prompts"]
    n0, n1 = results[1, 0]["num_prompts"], results[1, 1]["num_prompts"]
    assert results[1, 0]["idle_counts"] == [2] * n0 + [0] * n0
    assert results[1, 1]["idle_counts"] == [1] * n1


def test_sync_from_policy_trainer_matches_its_logprobs(model_dir):
    out = model_dir.parent / "out_trainer"
    launch(model_dir, out, "--trainer")
    for rank in (0, 1):
        r = json.loads((out / f"rank{rank}_trainer.json").read_text())
        assert r["num_samples"] == 6
        assert r["max_logprob_diff_before_sync"] > 1e-2, "the RAFT step did not move the policy"
        assert r["max_logprob_diff"] < 1e-3, r["max_logprob_diff"]
        assert r["max_gathered_at_once"] <= max(r["bucket_bytes"], r["largest_param_bytes"])
        assert r["buckets"] > 5 and r["process_group_alive"]
