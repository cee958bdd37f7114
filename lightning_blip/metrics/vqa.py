"""VQA v2 accuracy with the official evaluation's rules (GT-Vision-Lab/VQA ``vqaEval.py``, 2021 fix).

Per question, with the human answers ``A`` (10 in VQA v2) and the prediction ``p``:

1. Newlines and tabs become spaces and every answer and the prediction are stripped, always.
2. Only when the stripped human answers are not all identical, the answers and the prediction are
   normalised (:func:`normalize_answer`): punctuation, lowercase, number words to digits, articles
   dropped, contractions restored. With identical answers the comparison is exact ("two" scores 0
   against ten "2").
3. Leave-one-out: each annotator is left out once (equal answers are distinct annotators) and the
   prediction scores ``min(1, matches among the other answers / 3)``; the accuracy is the average.

LAVIS's copy (``lavis/common/vqa_tools/vqa_eval.py``) ports the code from before the 2021 fix: it
always normalises the prediction, applies only the punctuation step to the human answers (when they
differ) and never strips them, so e.g. "two" against ten "2" scores 1.0 there and 0 here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_blip.metrics.sync import IdsLike, TypedListMetric, cat_state, first_occurrence, ids_tensor

# The official punctuation marks (the apostrophe and colon are not among them).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")  # the script ran on Python 2: \d meant [0-9]
_PERIOD = re.compile(r"\.(?![0-9])")
# The script passes ``re.UNICODE`` (32) where ``re.sub`` takes its count: at most 32 periods go.
_MAX_PERIODS = 32
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset(("a", "an", "the"))
# Missing-apostrophe spellings -> the official form. The official table also has keys with capitals
# (Im, Ive, Id've, I'dve), which never match after lowercasing, and keys that already have their
# apostrophes (let's, she's), which map to themselves; both are left out as they change nothing.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",  # sic: the official table maps this one backwards
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
ANSWER_TYPES = ("yes/no", "number", "other")


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(text: str) -> str:
    """A mark touching a space, or any mark when the text has digit,digit, is deleted; else it
    becomes a space. Then periods not followed by a digit are deleted ("2.5" stays)."""
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete or touches_space else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def normalize_answer(text: str) -> str:
    """The official normalisation: punctuation, lowercase, number words, articles, contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in _punctuation(text).lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the human answers (in ``[0, 1]``)."""
    if isinstance(answers, str) or not answers:
        raise ValueError("answers must be a non-empty list of strings")
    pred, answers = _strip(pred), [_strip(a) for a in answers]
    if len(set(answers)) > 1:
        pred, answers = normalize_answer(pred), [normalize_answer(a) for a in answers]
    matches = sum(a == pred for a in answers)
    return sum(min(1.0, (matches - (a == pred)) / 3) for a in answers) / len(answers)


class VQAAccuracy(TypedListMetric):
    """Official VQA v2 accuracy, overall and per answer type; syncs across ranks.

    ``update(preds, target, answer_types=None, ids=None)``: ``B`` predicted answers, ``B`` lists of
    human answers, optional ``B`` answer types (one of ``answer_types``, or None for a question
    without one: it counts in ``overall`` only) and ``(B,)`` question ids
    (a repeated id, e.g. distributed padding, is ignored). ``compute()`` -> ``{"overall": acc}`` plus
    one entry per answer type seen; float64 fractions in ``[0, 1]`` (the official script prints
    ``100 * acc`` rounded to 2 decimals).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, answer_types: Sequence[str] = ANSWER_TYPES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.answer_types = tuple(answer_types)
        self.add_list_state("accuracy", torch.float64)
        self.add_list_state("type_index", torch.int64)
        self.add_list_state("ids", torch.int64)

    def update(
        self,
        preds: Sequence[str],
        target: Sequence[Sequence[str]],
        answer_types: Sequence[str] | None = None,
        ids: IdsLike | None = None,
    ) -> None:
        if isinstance(preds, str) or len(preds) != len(target):
            raise ValueError(
                f"preds must be a list of strings as long as target, got {len(preds)} vs {len(target)}"
            )
        if answer_types is None:
            types = [-1] * len(preds)
        else:
            if len(answer_types) != len(preds):
                raise ValueError(f"got {len(answer_types)} answer types for {len(preds)} questions")
            unknown = set(answer_types) - set(self.answer_types) - {None}
            if unknown:
                raise ValueError(f"unknown answer types {sorted(unknown)}; expected {self.answer_types}")
            types = [-1 if t is None else self.answer_types.index(t) for t in answer_types]
        self.accuracy.append(
            torch.tensor(
                [vqa_accuracy(p, a) for p, a in zip(preds, target)], dtype=torch.float64, device=self.device
            )
        )
        self.type_index.append(torch.tensor(types, dtype=torch.int64, device=self.device))
        self.ids.append(ids_tensor(ids, len(preds), self.device))

    def compute(self) -> dict[str, Tensor]:
        accuracy, types, ids = (cat_state(s) for s in (self.accuracy, self.type_index, self.ids))
        if accuracy.numel() == 0:
            raise ValueError("VQAAccuracy.compute() needs at least one update")
        keep = first_occurrence(ids.long())
        accuracy, types = accuracy[keep].double(), types[keep].long()
        result = {"overall": accuracy.mean()}
        for index, name in enumerate(self.answer_types):
            of_type = types == index
            if of_type.any():
                result[name] = accuracy[of_type].mean()
        return result
