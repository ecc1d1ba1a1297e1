"""The tiny model folder loads back through the Auto classes exactly as it was built."""
import random
import string

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from gvm.toy import (
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    PAD_TOKEN,
    build_tiny,
    build_tokenizer,
    tiny_config,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def random_text(rng: random.Random, length: int, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def test_folder_has_the_files_a_hf_checkpoint_has(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    for required in ("config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"):
        assert required in names, f"{required} missing from {sorted(names)}"


def test_config_loads_with_the_requested_shape_and_token_ids(tiny_dir):
    config = AutoConfig.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert config.model_type == "qwen2"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 128, 4)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (2, 32, 256)
    assert config.vocab_size == len(tokenizer)
    assert config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    assert config.pad_token_id != config.eos_token_id  # padding masks must not hide the EOS label
    assert config.tie_word_embeddings is False


def test_model_loads_in_float32_and_predicts_over_the_whole_vocabulary(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = torch.tensor([tokenizer.encode("12+34=")])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    stop_ids = set(model.generation_config.eos_token_id)
    assert stop_ids == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END_TOKEN)}


def test_loaded_tokenizer_round_trips_random_text_exactly(seed, tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    rng = random.Random(seed)
    for _ in range(20):
        text = random_text(rng, rng.randint(1, 200), string.printable)
        ids = tokenizer.encode(text)
        assert len(ids) == len(text), "every ASCII character must be exactly one token"
        assert tokenizer.decode(ids) == text
    unicode_text = "x² ≤ π, café, 中文, 😀 \\boxed{\\frac{1}{2}}"
    assert tokenizer.decode(tokenizer.encode(unicode_text)) == unicode_text


def test_built_and_loaded_tokenizers_agree_token_for_token(seed, tiny_dir):
    built = build_tokenizer()
    loaded = AutoTokenizer.from_pretrained(tiny_dir)
    assert len(built) == len(loaded)
    rng = random.Random(seed)
    alphabet = string.printable + "é中😀" + IM_END_TOKEN
    for _ in range(20):
        text = random_text(rng, rng.randint(1, 100), alphabet)
        assert built.encode(text) == loaded.encode(text), repr(text)


def test_special_tokens_are_single_ids_and_skippable(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for token in (EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, PAD_TOKEN):
        assert len(tokenizer.encode(token)) == 1, token
    ids = tokenizer.encode(f"{IM_START_TOKEN}ab{IM_END_TOKEN}{EOS_TOKEN}")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template_is_qwen_style(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1"}],
        add_generation_prompt=True, tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n1+1<|im_end|>\n<|im_start|>assistant\n"
    )


def test_same_seed_same_weights_and_caller_rng_untouched(tmp_path):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    first = load_file(build_tiny(tmp_path / "a", seed=7) / "model.safetensors")
    assert torch.equal(torch.rand(3), expected_next), "build_tiny moved the global torch RNG"
    second = load_file(build_tiny(tmp_path / "b", seed=7) / "model.safetensors")
    other = load_file(build_tiny(tmp_path / "c", seed=8) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    name = "model.embed_tokens.weight"
    assert not torch.equal(first[name], other[name])


def test_tied_embeddings_share_the_matrix_after_loading(tmp_path):
    path = build_tiny(tmp_path / "tied", tie_word_embeddings=True, num_layers=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_config_rejects_head_dim_that_vllm_would_recompute():
    with pytest.raises(ValueError, match="head_dim"):
        tiny_config(260, eos_token_id=256, pad_token_id=259, hidden_size=128, num_heads=4, head_dim=16)
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny_config(260, eos_token_id=256, pad_token_id=259, num_heads=4, num_kv_heads=3)
