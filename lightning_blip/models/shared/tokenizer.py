"""The BLIP tokenizer: bert-base-uncased WordPiece plus ``[DEC]`` (bos) and ``[ENC]``."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from transformers import BertTokenizer

DEC_TOKEN = "[DEC]"
ENC_TOKEN = "[ENC]"


def bundled_vocab() -> Path:
    """Path of the bert-base-uncased vocabulary shipped with the package (30,522 tokens)."""
    return Path(str(resources.files("lightning_blip") / "assets" / "bert-base-uncased-vocab.txt"))


def build_tokenizer(vocab: str | Path | None = None) -> BertTokenizer:
    """Build the BLIP tokenizer from a local ``vocab.txt`` or a directory holding one.

    ``[DEC]`` becomes the bos token (id 30522 with the bert-base-uncased vocabulary) and ``[ENC]``
    an additional special token (id 30523), as in BLIP. ``None`` uses the bundled vocabulary.
    """
    path = bundled_vocab() if vocab is None else Path(vocab)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer vocabulary not found: {path}")
    # transformers 5 reads the whole file only through ``vocab=`` (``vocab_file=`` builds 5 tokens).
    tokenizer = BertTokenizer(vocab=str(path), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    return tokenizer


@cache
def default_tokenizer() -> BertTokenizer:
    """:func:`build_tokenizer` with the bundled vocabulary, built once (the inference calls' default)."""
    return build_tokenizer()
