"""A tiny Qwen2 model and a character-level tokenizer, built in code.

No model can be downloaded on the project's machines, so tests and the default run build this
one: random weights, a fixed alphabet, saved as an ordinary Hugging Face folder that
`AutoModelForCausalLM`, `AutoTokenizer` and vLLM all load like any Qwen2 checkpoint.

Folder written by `build_tiny(path)`:

    config.json               Qwen2Config (float32, eos/pad/bos ids set)
    generation_config.json    stops at <|endoftext|> or <|im_end|>
    model.safetensors         random init from `seed`
    tokenizer.json            byte-level vocabulary (no merges) and the special tokens
    tokenizer_config.json     special tokens
    chat_template.jinja       the Qwen-style chat template
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# Ids 256..259, after the 256 byte tokens, as Qwen2.5 places its specials after the base vocab.
SPECIAL_TOKENS = (EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, PAD_TOKEN)

# Qwen2's pre-tokenizer split. With no merges it cannot change which tokens come out (every
# token is one byte); it is here so this pipeline is the one `Qwen2Tokenizer` rebuilds on load.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen-style chat template: every message in <|im_start|>role ... <|im_end|> blocks, and an
# open assistant turn when the caller asks for a generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyModelConfig:
    """The tiny model's shape (the run config's section `tiny`; `build_tiny` takes the same keys)."""
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 4                   # head_dim * num_heads must equal hidden_size (vLLM)
    num_kv_heads: int = 2
    head_dim: int = 32                   # vLLM's CPU attention rejects 16 (32 and 64 work)
    intermediate_size: int = 256
    max_position_embeddings: int = 512   # prompt + response; the built-in task's are < 120 characters
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be >= 1")
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(
                f"hidden_size={self.hidden_size}: must equal head_dim * num_heads = {self.head_dim} * "
                f"{self.num_heads} (vLLM's Qwen2 computes head_dim as hidden_size // num_heads); change "
                f"hidden_size or head_dim")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_kv_heads={self.num_kv_heads}: must divide num_heads={self.num_heads} "
                             f"(grouped-query attention)")


def byte_symbols() -> list[str]:
    """The printable symbol that byte-level BPE uses for each byte value 0..255 (GPT-2's scheme):
    visible Latin-1 characters stand for themselves, the rest are shifted past U+0100."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in visible:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def build_tokenizer(model_max_length: int = TinyModelConfig.max_position_embeddings) -> PreTrainedTokenizerFast:
    """The character-level tokenizer: one token per byte, so every ASCII character is one
    token, any other text still round-trips (as its UTF-8 bytes), and nothing maps to unk.

    Why bytes and not a plain character vocabulary with an unk token: `AutoTokenizer` loads
    every folder whose config says `qwen2` as `Qwen2Tokenizer`, which rebuilds a byte-level
    pipeline from the saved vocabulary whatever tokenizer.json says. A byte vocabulary with no
    merges is the character-level tokenizer that survives that load (and vLLM's) unchanged.
    """
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def tiny_config(vocab_size: int, *, eos_token_id: int, pad_token_id: int, **shape) -> Qwen2Config:
    """A Qwen2Config small enough to train on two CPU cores; `shape` holds TinyModelConfig keys."""
    tiny = TinyModelConfig(**shape)
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        head_dim=tiny.head_dim,
        max_position_embeddings=tiny.max_position_embeddings,
        max_window_layers=tiny.num_layers,
        tie_word_embeddings=tiny.tie_word_embeddings,
        # Like Qwen2.5, no BOS is prepended; bos_token_id names the document separator.
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def build_tiny(path: str | Path, *, seed: int = 0, **shape) -> Path:
    """Write a randomly initialised tiny Qwen2 model (`shape`: TinyModelConfig keys), its tokenizer
    and generation config to `path` (created if needed) and return it. The same seed gives the
    same weights."""
    path = Path(path)
    tiny = TinyModelConfig(**shape)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(model_max_length=tiny.max_position_embeddings)
    config = tiny_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **asdict(tiny))
    # A private generator state: building a model must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        # A chat turn ends at <|im_end|>; raw text ends at <|endoftext|>.
        eos_token_id=[tokenizer.eos_token_id, im_end_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
