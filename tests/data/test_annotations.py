import codecs
import json
import logging
from pathlib import Path

import pytest

from lightning_blip.data.annotations import (
    ImageTextRecord,
    expand_captions,
    load_annotations,
    parse_record,
    read_annotations,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_json_list_with_defaults_and_extra_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.json",
        json.dumps(
            [
                {"image": "x/1.jpg", "caption": "A dog", "image_id": 7, "dataset": "coco"},
                {"image": "x/2.jpg", "caption": ["one", "two"]},
                {"image": "x/3.jpg", "caption": "c", "image_id": None},
            ]
        ),
    )
    records, skipped = load_annotations(path)
    assert skipped == 0
    assert records == [
        ImageTextRecord("x/1.jpg", ("A dog",), "7"),
        ImageTextRecord("x/2.jpg", ("one", "two"), "x/2.jpg"),
        ImageTextRecord("x/3.jpg", ("c",), "x/3.jpg"),
    ]


def test_jsonl_skips_a_bad_line_and_a_bad_record_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [
        json.dumps({"image": "1.jpg", "caption": "first"}),
        "{not json",
        "",
        json.dumps({"image": "", "caption": "empty image"}),
        json.dumps({"image": "2.jpg", "caption": "second", "image_id": "i2"}),
    ]
    path = _write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        records, skipped = load_annotations(str(path))
    assert [r.image for r in records] == ["1.jpg", "2.jpg"]
    assert records[1].image_id == "i2"
    assert skipped == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert str(path) in warnings[0] and "line 2" in warnings[0]
    assert str(path) in warnings[1] and "line 4" in warnings[1]


@pytest.mark.parametrize(
    "bad",
    [
        ["not", "a", "dict"],
        {"caption": "no image"},
        {"image": 3, "caption": "image not a string"},
        {"image": "a.jpg"},
        {"image": "a.jpg", "caption": 5},
        {"image": "a.jpg", "caption": ["ok", 5]},
        {"image": "a.jpg", "caption": []},
        {"image": "a.jpg", "caption": "c", "image_id": {"nested": 1}},
        {"image": "a.jpg", "caption": "  "},
        {"image": "a.jpg", "caption": ["...", "!"]},
    ],
)
def test_each_kind_of_malformed_record_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: object
) -> None:
    good = {"image": "ok.jpg", "caption": "fine"}
    path = _write(tmp_path / "a.json", json.dumps([good, bad, good]))
    with caplog.at_level(logging.WARNING):
        records, skipped = load_annotations(path)
    assert (len(records), skipped) == (2, 1)
    assert len(caplog.records) == 1 and "record 1" in caplog.records[0].getMessage()


def test_captions_without_a_word_are_dropped_from_a_list() -> None:
    assert parse_record({"image": "a.jpg", "caption": ["", "a dog", "?!"]}).captions == ("a dog",)
    assert parse_record({"image": "a.jpg", "caption": ["A dog.", "...", "x"]}).captions == ("A dog.", "x")


def test_dropped_captions_are_counted_with_one_warning_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [
        {"image": "1.jpg", "caption": ["A dog.", "...", "x"]},
        {"image": "2.jpg", "caption": ["", "a cat", "?!", " "]},
        {"image": "3.jpg", "caption": ["...", "!"]},  # nothing left: a skipped record, not dropped captions
        {"image": "4.jpg", "caption": "a bird"},
    ]
    a = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(line) for line in lines))
    b = _write(tmp_path / "b.json", json.dumps([{"image": "5.jpg", "caption": ["ok", "--"]}]))
    with caplog.at_level(logging.WARNING):
        loaded = read_annotations([a, b])
    assert [r.captions for r in loaded.records] == [("A dog.", "x"), ("a cat",), ("a bird",), ("ok",)]
    assert (loaded.skipped_records, loaded.dropped_captions) == (1, 5)
    dropped = [r.getMessage() for r in caplog.records if "without a word" in r.getMessage()]
    assert len(dropped) == 2  # once per file, not once per caption
    assert str(a) in dropped[0] and "dropped 4 captions" in dropped[0]
    assert str(b) in dropped[1] and "dropped 1 captions" in dropped[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_annotations(b) == ([ImageTextRecord("5.jpg", ("ok",), "5.jpg")], 0)  # its return kept
    assert "dropped 1 captions" in caplog.text


def test_jsonl_lines_that_break_the_decoder_are_skipped_not_raised(tmp_path: Path) -> None:
    good = json.dumps({"image": "1.jpg", "caption": "first"}).encode()
    lines = [
        codecs.BOM_UTF8 + good,  # a byte-order mark before the first record
        b'{"image": "2.jpg", "caption": "caf\xe9"}',  # Latin-1, not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # too deep for the decoder
        b'{"image": "3.jpg", "caption": "x", "n": 1' + b"0" * 5000 + b"}",  # an integer too long to parse
        json.dumps({"image": "4.jpg", "caption": "caf\u00e9"}).encode(),
    ]
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, skipped = load_annotations(path)
    assert [r.image for r in records] == ["1.jpg", "4.jpg"] and skipped == 3
    assert records[1].captions == ("caf\u00e9",)


def test_a_json_file_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps([{"image": "1.jpg", "caption": "x"}]).encode())
    assert load_annotations(path) == ([ImageTextRecord("1.jpg", ("x",), "1.jpg")], 0)


def test_several_files_are_concatenated(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", json.dumps([{"image": "1.jpg", "caption": "x"}]))
    b = _write(tmp_path / "b.jsonl", json.dumps({"image": "2.jpg", "caption": "y"}) + "\n")
    records, skipped = load_annotations([a, str(b)])
    assert [r.image for r in records] == ["1.jpg", "2.jpg"] and skipped == 0


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_annotations(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.json", "this is not json"),
        ("a.jsonl", "nope\nnor this\n"),
        ("a.json", '{"image": "x"}'),
        ("a.txt", "[]"),
    ],
)
def test_a_file_that_is_not_annotations_raises_naming_it(tmp_path: Path, name: str, text: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises((TypeError, ValueError), match=str(path)):
        load_annotations(path)


def test_expand_captions_gives_one_pair_per_caption() -> None:
    records = [ImageTextRecord("a", ("1", "2"), "a"), ImageTextRecord("b", ("3",), "b")]
    assert expand_captions(records) == [(0, 0), (0, 1), (1, 0)]
