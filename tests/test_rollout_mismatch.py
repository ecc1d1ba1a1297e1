"""Mismatch correction between the trainer's and the engine's log-probs: each mode's weights
against per-token formulas written out here, and the metrics against direct counts."""
import math

import pytest
import torch

from gvm.engines.mismatch import MismatchConfig, mismatch_weights, pad_logprobs


def _random_batch(seed: int, batch: int = 6, width: int = 9, spread: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    engine = -torch.rand(batch, width, generator=g) * 4
    old = engine + torch.randn(batch, width, generator=g) * spread
    lengths = torch.randint(0, width + 1, (batch,), generator=g)
    lengths[0] = width  # at least one full row
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return old, engine, mask


def test_tis_weights_are_capped_ratios(seed):
    old, engine, mask = _random_batch(seed)
    cap = 1.7
    weights, metrics = mismatch_weights(old, engine, mask, MismatchConfig(mode="tis", tis_cap=cap))
    for b in range(old.shape[0]):
        for t in range(old.shape[1]):
            expected = min(math.exp(old[b, t] - engine[b, t]), cap) if mask[b, t] else 0.0
            assert weights[b, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    ratios = (old - engine).exp()[mask]
    assert metrics["mismatch/frac_tokens_truncated"] == pytest.approx(float((ratios > cap).float().mean()))
    assert metrics["mismatch/mean_weight"] == pytest.approx(float(ratios.clamp(max=cap).mean()), rel=1e-5)


@pytest.mark.parametrize("statistic", ["max", "mean"])
def test_mask_drops_whole_sequences_over_threshold(seed, statistic):
    old, engine, mask = _random_batch(seed)
    threshold = 1.2
    config = MismatchConfig(mode="mask", mask_statistic=statistic, mask_threshold=threshold)
    weights, metrics = mismatch_weights(old, engine, mask, config)
    dropped = 0
    counted = 0
    for b in range(old.shape[0]):
        row = (old[b] - engine[b]).abs()[mask[b]]
        if len(row) == 0:
            assert weights[b].abs().sum() == 0
            continue
        counted += 1
        stat = row.max() if statistic == "max" else row.mean()
        keep = bool(stat <= threshold)
        dropped += not keep
        assert torch.equal(weights[b], mask[b].float() * float(keep))
    assert metrics["mismatch/frac_seqs_masked"] == pytest.approx(dropped / counted)


def test_none_mode_weights_are_the_mask_and_metrics_still_measure(seed):
    old, engine, mask = _random_batch(seed)
    weights, metrics = mismatch_weights(old, engine, mask, MismatchConfig(mode="none"))
    assert torch.equal(weights, mask.float())
    abs_ratio = (old - engine).abs()[mask]
    assert metrics["mismatch/mean_abs_log_ratio"] == pytest.approx(float(abs_ratio.mean()), rel=1e-5)
    assert metrics["mismatch/max_abs_log_ratio"] == pytest.approx(float(abs_ratio.max()), rel=1e-5)


def test_identical_policies_give_unit_weights_and_zero_metrics(seed):
    _, engine, mask = _random_batch(seed)
    for mode in ("tis", "mask", "none"):
        weights, metrics = mismatch_weights(engine.clone(), engine, mask, MismatchConfig(mode=mode))
        assert torch.equal(weights, mask.float())
        assert metrics["mismatch/max_abs_log_ratio"] == 0.0
        assert metrics["mismatch/frac_tokens_truncated"] == 0.0
        assert metrics["mismatch/frac_seqs_masked"] == 0.0


def test_padding_is_ignored():
    """Garbage in padded positions changes nothing."""
    old, mask = pad_logprobs([[-1.0, -2.0, -0.5], [-0.3]])
    engine, _ = pad_logprobs([[-1.1, -3.0, -0.5], [-0.2]])
    noisy_old, noisy_engine = old.clone(), engine.clone()
    noisy_old[~mask] = 50.0
    noisy_engine[~mask] = -50.0
    for mode in ("tis", "mask", "none"):
        clean = mismatch_weights(old, engine, mask, MismatchConfig(mode=mode))
        noisy = mismatch_weights(noisy_old, noisy_engine, mask, MismatchConfig(mode=mode))
        assert torch.equal(clean[0], noisy[0])
        assert clean[1] == noisy[1]
    # old - engine = [0.1, 1.0, 0.0], [-0.1]: only token 2 has a ratio (e = 2.72) over the cap 2.
    weights, metrics = mismatch_weights(old, engine, mask, MismatchConfig(mode="tis", tis_cap=2.0))
    assert weights[0, 1].item() == pytest.approx(2.0)
    assert metrics["mismatch/frac_tokens_truncated"] == pytest.approx(1 / 4)
    assert metrics["mismatch/max_abs_log_ratio"] == pytest.approx(1.0)


def test_pad_logprobs_shapes():
    values, mask = pad_logprobs([[-1.0], [], [-0.5, -0.25]])
    assert values.shape == mask.shape == (3, 2)
    assert mask.tolist() == [[True, False], [False, False], [True, True]]
    assert values[2].tolist() == [-0.5, -0.25]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        MismatchConfig(mode="clip")
    with pytest.raises(ValueError, match="tis_cap"):
        MismatchConfig(tis_cap=0)
    with pytest.raises(ValueError, match="same"):
        mismatch_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
