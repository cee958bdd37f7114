import pytest
import torch

from lightning_blip.data.collate import ImageTextCollator
from lightning_blip.models.shared.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _item(caption: str, index: int, image_id: int = 0) -> dict:
    return {
        "image": torch.full((3, 8, 8), float(index)),
        "caption": caption,
        "image_id": image_id,
        "index": index,
    }


def test_batch_keys_shapes_and_special_tokens(tokenizer) -> None:
    items = [_item("a dog", 3, 1), None, _item("a dog runs on the grass", 5, 2)]
    batch = ImageTextCollator(tokenizer)(items)
    assert set(batch) == {
        "image",
        "input_ids",
        "attention_mask",
        "image_id",
        "index",
        "caption",
        "num_skipped",
    }
    assert batch["image"].shape == (2, 3, 8, 8)
    assert batch["image"][1, 0, 0, 0] == 5.0
    # [CLS] a dog [SEP] [PAD] x4 / [CLS] a dog runs on the grass [SEP]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 8)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    ids = batch["input_ids"]
    assert ids[:, 0].tolist() == [tokenizer.cls_token_id] * 2 == [101, 101]
    assert ids[0, 3] == ids[1, 7] == tokenizer.sep_token_id == 102
    assert ids[0, 4:].tolist() == [0, 0, 0, 0]
    assert batch["attention_mask"].tolist() == [[1] * 4 + [0] * 4, [1] * 8]
    assert tokenizer.decode(ids[1, 1:7]) == "a dog runs on the grass"
    assert batch["image_id"].tolist() == [1, 2] and batch["index"].tolist() == [3, 5]
    assert batch["image_id"].dtype == batch["index"].dtype == torch.long
    assert batch["caption"] == ["a dog", "a dog runs on the grass"]
    assert batch["num_skipped"] == 1


def test_truncation_keeps_sep_last(tokenizer) -> None:
    batch = ImageTextCollator(tokenizer, max_length=5)([_item("one two three four five six", 0)])
    assert batch["input_ids"].tolist() == [
        [101] + tokenizer.convert_tokens_to_ids(["one", "two", "three"]) + [102]
    ]


def test_all_skipped_gives_an_empty_batch(tokenizer) -> None:
    batch = ImageTextCollator(tokenizer)([None, None])
    assert batch["image"].shape == (0, 3, 0, 0)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (0, 0)
    assert batch["input_ids"].dtype == torch.long
    assert batch["image_id"].shape == batch["index"].shape == (0,)
    assert batch["image_id"].dtype == torch.long
    assert batch["caption"] == [] and batch["num_skipped"] == 2
