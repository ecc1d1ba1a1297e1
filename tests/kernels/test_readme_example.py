"""The README's recipe for calling fused_logprobs from another trainer, run on a real (tiny)
Qwen2: packed sequences with restarting position ids give the same per-token log-probs as each
sequence run alone through the HF model, and the per-sequence head norms match autograd."""
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from gvm_kernels import fused_logprobs, policy_loss


def tiny_qwen2(vocab: int = 97) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=128, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).float().eval()


def test_readme_packed_recipe_matches_per_sequence_hf_logprobs():
    model = tiny_qwen2()
    lengths, prompt_lengths = [7, 1, 12, 4], [3, 1, 5, 1]
    seqs = [torch.randint(0, 97, (n,)) for n in lengths]
    input_ids = torch.cat(seqs)
    position_ids = torch.cat([torch.arange(n) for n in lengths])
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    response_mask = torch.cat([torch.arange(n) >= p for n, p in zip(lengths, prompt_lengths)])

    # --- the README snippet, verbatim apart from the inputs above
    hidden = model.model(input_ids[None], position_ids=position_ids[None], use_cache=False).last_hidden_state[0]  # [N, d]
    targets = input_ids.roll(-1)
    loss_here = response_mask.roll(-1)
    loss_here[cu_seqlens[1:].long() - 1] = False
    targets = targets.masked_fill(~loss_here, -100)
    sq_norms = torch.empty(cu_seqlens.numel() - 1, dtype=torch.float32, device=hidden.device)
    logp, entropy = fused_logprobs(hidden, model.lm_head.weight, targets, cu_seqlens=cu_seqlens,
                                   temperature=1.0, return_entropy=True, sq_grad_norms_out=sq_norms)
    advantages = torch.randn(len(lengths))
    loss, _ = policy_loss(logp, logp.detach(), advantages, loss_here, kind="raft++",
                          cu_seqlens=cu_seqlens, agg="token-mean")
    loss.backward()
    # ---

    for b, seq in enumerate(seqs):
        start, end = cu_seqlens[b].item(), cu_seqlens[b + 1].item()
        with torch.no_grad():
            alone = torch.log_softmax(model(seq[None]).logits[0].double(), -1)  # [L, V]
        for t in range(end - start - 1):
            if loss_here[start + t]:
                expected = alone[t, seq[t + 1]].item()
                assert abs(logp[start + t].item() - expected) < 1e-4, (b, t)
            else:
                assert logp[start + t].item() == 0.0
        assert logp[end - 1].item() == 0.0  # never across a boundary

    # per-sequence norms: the head gradient of this loss, one sequence at a time
    n_tokens = loss_here.sum()
    for b in range(len(lengths)):
        model.zero_grad()
        start, end = cu_seqlens[b].item(), cu_seqlens[b + 1].item()
        h = model.model(input_ids[None, start:end], position_ids=position_ids[None, start:end]).last_hidden_state[0]
        lp = torch.log_softmax(model.lm_head(h).double(), -1).gather(1, targets[start:end].clamp(min=0)[:, None])[:, 0]
        seq_loss = -(advantages[b] * lp * loss_here[start:end]).sum() / n_tokens
        seq_loss.backward()
        expected = model.lm_head.weight.grad.double().pow(2).sum().item()
        assert abs(sq_norms[b].item() - expected) <= 1e-4 * max(expected, 1e-12), (b, sq_norms[b].item(), expected)
