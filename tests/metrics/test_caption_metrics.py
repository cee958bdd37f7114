"""COCO BLEU, ROUGE-L and CIDEr-D against pycocoevalcap, and the metrics' id handling."""

from __future__ import annotations

import pytest
import torch
from caption_data import caption_set, generated_captions

from lightning_blip.metrics import (
    CIDErScore,
    COCOBLEUScore,
    COCOROUGELScore,
    cider_d,
    corpus_bleu,
    java_available,
    rouge_l,
)

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is the reference (the `test` extra)")
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge


def reference_scores(preds: list[str], refs: list[list[str]]) -> dict:
    """pycocoevalcap's scorers on already tokenised captions."""
    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    rouge, rouge_per_image = Rouge().compute_score(gts, res)
    return {
        "bleu": bleu,
        "cider": cider,
        "cider_i": cider_per_image,
        "rouge": rouge,
        "rouge_i": rouge_per_image,
    }


def edge_case_set() -> tuple[list[str], list[list[str]]]:
    """200 images x 5 references, with edge cases in front."""
    preds, refs = caption_set(200)
    preds[0] = ""  # empty prediction
    preds[1] = " ".join(["a", "man"] * 20)  # longer than every reference
    refs[2] = refs[2][:1]  # a single reference
    preds[3], refs[3] = (
        "a man on the red table",
        ["a man on the red", "a man on the red table now"],
    )  # length tie
    preds[4] = refs[4][2]  # exactly a reference
    preds[5], refs[5] = "blue", ["two", "two dogs"]  # no overlap
    return preds, refs


def test_functions_match_pycocoevalcap():
    preds, refs = edge_case_set()
    expected = reference_scores(preds, refs)
    cider = cider_d(preds, refs)
    rouge = [rouge_l(p, r) for p, r in zip(preds, refs)]
    assert max(abs(a - b) for a, b in zip(corpus_bleu(preds, refs), expected["bleu"])) < 1e-12
    assert max(abs(a - b) for a, b in zip(cider, expected["cider_i"])) < 1e-12
    assert max(abs(a - b) for a, b in zip(rouge, expected["rouge_i"])) < 1e-12
    assert expected["cider"] > 0.1 and expected["bleu"][3] > 1e-3  # not a degenerate set


def test_metrics_match_pycocoevalcap_over_batches():
    preds, refs = edge_case_set()
    expected = reference_scores(preds, refs)
    metrics = {"bleu": COCOBLEUScore(), "cider": CIDErScore(), "rouge": COCOROUGELScore()}
    for start in range(0, len(preds), 32):
        for metric in metrics.values():
            metric.update(preds[start : start + 32], refs[start : start + 32])
    got = {name: metric.compute() for name, metric in metrics.items()}
    assert got["bleu"].shape == (4,) and got["bleu"].dtype == torch.float64
    torch.testing.assert_close(
        got["bleu"], torch.tensor(expected["bleu"], dtype=torch.float64), rtol=0, atol=1e-6
    )
    assert abs(got["cider"].item() - expected["cider"]) < 1e-6
    assert abs(got["rouge"].item() - expected["rouge"]) < 1e-6


def test_repeated_ids_are_dropped_and_entries_without_ids_all_count():
    preds, refs = caption_set(12, seed=1)
    once = CIDErScore()
    once.update(preds, refs, ids=list(range(12)))
    padded = CIDErScore()
    padded.update(preds[:7], refs[:7], ids=range(7))
    padded.update(preds[7:] + preds[:2], refs[7:] + refs[:2], ids=[*range(7, 12), 0, 1])  # sampler padding
    assert padded.compute().item() == pytest.approx(once.compute().item(), abs=1e-12)
    without_ids = CIDErScore()
    without_ids.update(preds + preds[:2], refs + refs[:2])
    assert without_ids.compute().item() != pytest.approx(once.compute().item(), abs=1e-6)


def test_bad_inputs_are_refused():
    metric = COCOBLEUScore()
    with pytest.raises(ValueError, match="as long as target"):
        metric.update(["a dog"], [["a dog"], ["a cat"]])
    with pytest.raises(ValueError, match="non-empty list"):
        metric.update(["a dog"], [[]])
    with pytest.raises(ValueError, match="non-negative"):
        metric.update(["a dog"], [["a dog"]], ids=[-3])
    with pytest.raises(ValueError, match="at least one update"):
        metric.compute()


@pytest.mark.skipif(not java_available(), reason="the official PTB tokenizer needs `java` and pycocoevalcap")
def test_raw_captions_match_the_official_pipeline():
    """Raw captions with punctuation: the Java PTB tokenizer + pycocoevalcap scorers, as in the COCO
    evaluation, against our metrics with either tokenizer."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = generated_captions(360, seed=3)
    preds, refs = captions[:60], [captions[60 + 5 * i : 65 + 5 * i] for i in range(60)]
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    expected = reference_scores([res[i][0] for i in range(60)], [gts[i] for i in range(60)])
    for backend in ("python", "java"):
        bleu, cider = COCOBLEUScore(tokenizer=backend), CIDErScore(tokenizer=backend)
        rouge = COCOROUGELScore(tokenizer=backend)
        for metric in (bleu, cider, rouge):
            metric.update(preds, refs)
        assert max(abs(a - b) for a, b in zip(bleu.compute().tolist(), expected["bleu"])) < 1e-6, backend
        assert abs(cider.compute().item() - expected["cider"]) < 1e-6, backend
        assert abs(rouge.compute().item() - expected["rouge"]) < 1e-6, backend
