"""Tiny offline language models for tests and CPU demos: a word-level tokenizer and random LLMs.

Nothing is downloaded: the tokenizer is built with the ``tokenizers`` library from the given texts
and the models are random transformers models saved with ``save_pretrained``, so that
``AutoTokenizer`` / ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` load them with
``local_files_only=True``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

LLMKind = Literal["opt", "gpt2", "llama", "t5"]

PAD, UNK, BOS, EOS, NEWLINE = "<pad>", "<unk>", "<s>", "</s>", "\n"

# words of easy-VQA questions/answers and of short captions: the default vocabulary
DEFAULT_TEXTS = (
    (
        "what color is the shape? what is the color of the shape? what shape is in the image? "
        "what shape is present? is there a circle? is there a rectangle? is there a triangle? "
        "is there a red shape? is there not a blue shape? does the image contain a green circle? "
        "is no shape gray? yes no red green blue black gray teal brown yellow circle rectangle triangle "
        "question: answer: short answer: a photo of a picture of an image with one small big shape on "
        "white background dog cat man woman riding a horse in the park next to on top sitting"
    ),
)


def train_word_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer whose vocabulary is the most frequent words of ``texts``.

    Words are runs of word characters or of punctuation; ``"\\n"`` is a token of its own (stage-2
    captions end with it). Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, ``"\\n"`` 4, then the
    words by decreasing frequency (ties alphabetically) up to ``vocab_size`` entries in all. No
    special token is added when encoding: see :func:`tokenizer_for`.
    """
    normalizer = normalizers.Lowercase()
    pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {token: i for i, token in enumerate((PAD, UNK, BOS, EOS, NEWLINE))}
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(cleanup=True)  # join words with spaces, no space before "?", "."
    return _wrap(backend)


def tokenizer_for(kind: LLMKind, tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """A copy of ``tokenizer`` that adds the special tokens the real tokenizer of ``kind`` adds.

    OPT and Llama prepend BOS, GPT-2 adds nothing, T5 appends EOS.
    """
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    eos = (tokenizer.eos_token, tokenizer.eos_token_id)
    templates = {
        "opt": ("BOS $A", "BOS $A $B", [bos]),
        "llama": ("BOS $A", "BOS $A $B", [bos]),
        "gpt2": ("$A", "$A $B", []),
        "t5": ("$A EOS", "$A EOS $B EOS", [eos]),
    }
    single, pair, special = templates[kind]
    single = single.replace("BOS", bos[0]).replace("EOS", eos[0])
    pair = pair.replace("BOS", bos[0]).replace("EOS", eos[0])
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    return _wrap(backend)


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )


def tiny_llm_config(
    kind: LLMKind,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_positions: int = 128,
) -> PretrainedConfig:
    """A transformers config of a small ``kind`` model over ``tokenizer``'s vocabulary."""
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if kind == "opt":
        return OPTConfig(
            hidden_size=hidden_size,
            word_embed_proj_dim=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            ffn_dim=intermediate_size,
            max_position_embeddings=max_positions,
            **ids,
        )
    if kind == "gpt2":
        return GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_positions,
            **ids,
        )
    if kind == "llama":
        return LlamaConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_positions,
            **ids,
        )
    if kind == "t5":
        return T5Config(
            d_model=hidden_size,
            d_kv=hidden_size // num_heads,
            d_ff=intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # FlanT5's (T5 v1.1) FFN; transformers runs it with gelu_new
            decoder_start_token_id=tokenizer.pad_token_id,  # T5's convention
            **ids,
        )
    raise ValueError(f"kind must be one of opt, gpt2, llama, t5; got {kind!r}")


def save_tiny_llm(
    kind: LLMKind,
    directory: str | Path,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    **sizes: int,
) -> Path:
    """Build a random ``kind`` model (sizes: see :func:`tiny_llm_config`) and save it with its tokenizer.

    ``tokenizer`` defaults to :func:`train_word_tokenizer` over :data:`DEFAULT_TEXTS`; it is saved
    through :func:`tokenizer_for`. The global torch RNG is left untouched. Returns ``directory``.
    """
    directory = Path(directory)
    tokenizer = tokenizer_for(kind, tokenizer or train_word_tokenizer(DEFAULT_TEXTS))
    config = tiny_llm_config(kind, tokenizer, **sizes)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
