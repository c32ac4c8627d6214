"""Benchmark scores, computed as the published evaluators compute them.

- Captioning: corpus BLEU-4 and CIDEr-D with the arithmetic of pycocoevalcap's `Bleu(4)` and
  `Cider` (the tests feed both the same tokens and compare). The COCO evaluator tokenizes with
  Stanford's PTB tokenizer, a Java program; `tokenize` stands in for it here: lower case,
  punctuation removed, split on white space. Also the exact-match rate: where captions follow a
  fixed grammar (`shapes`) a caption is right or wrong, and n-gram overlap hides which.
- VQA: VQAv2 accuracy, min(#humans who gave the answer / 3, 1) averaged over the ten
  leave-one-annotator-out subsets, after the official answer normalisation.
- Retrieval: Recall@K in both directions from an image x text score matrix, and how often the
  ITM probability falls on the right side of 0.5 (a match probability a client can threshold).

Scores are fractions in [0, 1] (CIDEr in [0, 10]), not percentages.

    caption_scores(["a red circle"], [["a red circle", "a red disc"]])  # {"bleu_4": ..., "cider": ...}
    vqa_accuracy(["two"], [["2"] * 10])  # 1.0
"""

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from blip2.errors import InvalidArgument

# pycocoevalcap's BLEU smoothing: keeps 0/0 at 0 and avoids dividing by zero.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")

Ngrams = Counter[tuple[str, ...]]


def tokenize(text: str) -> str:
    """Lower-cased words without punctuation, space-joined: the form both scorers read."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-4 and CIDEr-D of one caption per image against that image's reference captions."""
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r) for r in rs] for rs in references]
    return {"bleu_4": bleu_4(hyps, refs), "cider": cider(hyps, refs), "exact_match": exact_match(hyps, refs)}


def exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The fraction of tokenized hypotheses equal to one of their references."""
    _check_corpus(hypotheses, references)
    return sum(h in refs for h, refs in zip(hypotheses, references, strict=True)) / len(hypotheses)


def _ngrams(sentence: str, n: int = 4) -> Ngrams:
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise InvalidArgument(f"got {len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise InvalidArgument("cannot score an empty set of captions")
    if any(not rs for rs in references):
        raise InvalidArgument("every hypothesis needs at least one reference")


# -- BLEU ------------------------------------------------------------------------------------


def bleu_4(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> float:
    """Corpus BLEU-n over tokenized sentences: clipped n-gram counts summed over the corpus,
    and the brevity penalty from the reference length closest to each hypothesis."""
    _check_corpus(hypotheses, references)
    correct, guessed = [0] * n, [0] * n
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        length = len(hypothesis.split())
        hyp_length += length
        # Closest reference length; on a tie the shorter one, as pycocoevalcap's min over (distance, length).
        ref_length += min((abs(len(r.split()) - length), len(r.split())) for r in refs)[1]
        max_ref_counts = _max_counts([_ngrams(r, n) for r in refs])
        for ngram, count in _ngrams(hypothesis, n).items():
            correct[len(ngram) - 1] += min(max_ref_counts[ngram], count)
        for k in range(n):
            guessed[k] += max(0, length - k)
    score = 1.0
    for k in range(n):
        score *= (correct[k] + _BLEU_TINY) / (guessed[k] + _BLEU_SMALL)
    score **= 1.0 / n
    ratio = (hyp_length + _BLEU_TINY) / (ref_length + _BLEU_SMALL)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def _max_counts(counts: list[Ngrams]) -> Ngrams:
    merged: Ngrams = Counter()
    for c in counts:
        merged |= c  # Counter union keeps the maximum count of each n-gram
    return merged


# -- CIDEr-D ---------------------------------------------------------------------------------


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D over tokenized sentences: tf-idf n-gram vectors (idf from the references of this
    corpus), clipped cosine similarity, a Gaussian penalty on the length difference, times 10."""
    _check_corpus(hypotheses, references)
    ref_counts = [[_ngrams(r, n) for r in refs] for refs in references]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))  # an n-gram counts once per image
    log_corpus = float(np.log(float(len(references))))
    scores = []
    for hypothesis, counts in zip(hypotheses, ref_counts, strict=True):
        hyp = _tfidf(_ngrams(hypothesis, n), document_frequency, log_corpus, n)
        total = np.zeros(n)
        for ref in counts:
            total += _cider_similarity(hyp, _tfidf(ref, document_frequency, log_corpus, n), n, sigma)
        scores.append(np.mean(total) / len(counts) * 10.0)
    return float(np.mean(np.array(scores)))


_TfIdf = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def _tfidf(counts: Ngrams, document_frequency: Counter[tuple[str, ...]], log_corpus: float, n: int) -> _TfIdf:
    """Per n-gram order: the tf-idf vector, its norm, and the sentence's length."""
    vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
    norms = [0.0] * n
    length = 0
    for ngram, term_frequency in counts.items():
        order = len(ngram) - 1
        weight = float(term_frequency) * (log_corpus - float(np.log(max(1.0, document_frequency[ngram]))))
        vectors[order][ngram] = weight
        norms[order] += weight**2
        # pycocoevalcap measures length in bigrams (its `n == 1` is the 2-gram slot); kept so that
        # scores match the published ones.
        if order == 1:
            length += term_frequency
    return vectors, [float(np.sqrt(x)) for x in norms], length


def _cider_similarity(hyp: _TfIdf, ref: _TfIdf, n: int, sigma: float) -> np.ndarray:
    (hyp_vec, hyp_norm, hyp_len), (ref_vec, ref_norm, ref_len) = hyp, ref
    delta = float(hyp_len - ref_len)
    values = np.zeros(n)
    for k in range(n):
        for ngram, weight in hyp_vec[k].items():
            # "-D": the hypothesis weight is clipped at the reference's, so repeating words gains nothing.
            ref_weight = ref_vec[k].get(ngram, 0.0)
            values[k] += min(weight, ref_weight) * ref_weight
        if hyp_norm[k] != 0 and ref_norm[k] != 0:
            values[k] /= hyp_norm[k] * ref_norm[k]
        values[k] *= np.e ** (-(delta**2) / (2 * sigma**2))
    return values


# -- VQA accuracy ----------------------------------------------------------------------------

# The official VQA evaluator's tables (github.com/GT-Vision-Lab/VQA, vqaEval.py), verbatim.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow'sat", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_VQA_PUNCTUATION = [
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
]  # fmt: skip
# As written in the official code: "(?!<=\d)" is a look-ahead (not the intended look-behind),
# so a period goes unless a digit follows it ("2.5" keeps its point, "5." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_VQA_HUMANS_FOR_FULL_CREDIT = 3


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation: punctuation, then number words, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


def _punctuation(text: str) -> str:
    out = text
    for p in _VQA_PUNCTUATION:
        # A mark next to a space (or any "1,000"-style comma in the answer) is dropped; one between
        # two words ("black-and-white") becomes a space.
        if p + " " in text or " " + p in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_and_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean VQAv2 accuracy of one predicted answer per question against its human answers."""
    if len(predictions) != len(answers):
        raise InvalidArgument(f"got {len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise InvalidArgument("cannot score an empty set of answers")
    return sum(question_accuracy(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)


def question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """min(#other humans who gave it / 3, 1), averaged over leaving each human out in turn.

    Deliberate deviation: the official code normalises only when the humans disagree, so "Yes"
    scores 0 against ten "yes"; here both sides are always normalised. A question with a single
    reference answer (custom data) is scored by exact match, since leaving its one human out
    would leave nothing to match.
    """
    if not answers:
        raise InvalidArgument("every question needs at least one reference answer")
    predicted = normalize_answer(prediction)
    humans = [normalize_answer(a) for a in answers]
    if len(humans) == 1:
        return float(predicted == humans[0])
    matches = sum(h == predicted for h in humans)
    # Leaving out human i removes one match exactly when human i gave the predicted answer.
    subsets = [min((matches - (h == predicted)) / _VQA_HUMANS_FOR_FULL_CREDIT, 1.0) for h in humans]
    return sum(subsets) / len(subsets)


# -- Retrieval -------------------------------------------------------------------------------


def retrieval_recall(
    scores: Sequence[Sequence[float]] | np.ndarray, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K from an (images x texts) score matrix, where text j describes image text_to_image[j].

    Text retrieval (i2t): an image is a hit when any of its captions ranks in the top K.
    Image retrieval (t2i): a text is a hit when its image ranks in the top K.
    `recall@K` is the mean of the two directions (LAVIS reports their mean as `r_mean`).
    Ties rank the earlier index first. Images without any text are left out of i2t.
    """
    matrix = np.asarray(scores, dtype=np.float64)
    owners = np.asarray(text_to_image)
    if matrix.ndim != 2 or matrix.shape[1] != len(owners) or matrix.size == 0:
        raise InvalidArgument(f"need a non-empty (images x texts) matrix with {len(owners)} texts; got {matrix.shape}")
    if owners.min() < 0 or owners.max() >= matrix.shape[0]:
        raise InvalidArgument("text_to_image names an image outside the score matrix")
    i2t_ranks = _best_ranks(matrix, [np.flatnonzero(owners == i) for i in range(matrix.shape[0])])
    t2i_ranks = _best_ranks(matrix.T, [np.array([owner]) for owner in owners])
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_recall@{k}"] = float(np.mean(i2t_ranks < k))
        out[f"t2i_recall@{k}"] = float(np.mean(t2i_ranks < k))
        out[f"recall@{k}"] = (out[f"i2t_recall@{k}"] + out[f"t2i_recall@{k}"]) / 2
    return out


def match_accuracy(
    probabilities: Sequence[Sequence[float]] | np.ndarray, text_to_image: Sequence[int], texts: Sequence[str]
) -> float:
    """How often the match probability is on the right side of 0.5, over every matching (image,
    text) pair and as many non-matching ones: each text against the image after its own (a split
    is in random order, so that is a random other image; skipped if that image has the same text)."""
    matrix = np.asarray(probabilities, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < 2 or not matrix.shape[1] == len(text_to_image) == len(texts):
        raise InvalidArgument(f"need an (images x texts) matrix of 2 images or more and {len(texts)} texts")
    texts_of: dict[int, set[str]] = {}
    for text, image in zip(texts, text_to_image, strict=True):
        texts_of.setdefault(image, set()).add(text)
    right = []
    for t, (text, image) in enumerate(zip(texts, text_to_image, strict=True)):
        right.append(matrix[image, t] > 0.5)
        other = (image + 1) % matrix.shape[0]
        if text not in texts_of.get(other, set()):
            right.append(matrix[other, t] < 0.5)
    return float(np.mean(right))


def _best_ranks(matrix: np.ndarray, correct: list[np.ndarray]) -> np.ndarray:
    """For each query row, the 0-based rank of its best-ranked correct candidate."""
    ranks = []
    for row, targets in zip(matrix, correct, strict=True):
        if len(targets) == 0:
            continue
        order = np.argsort(-row, kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        ranks.append(position[targets].min())
    return np.array(ranks)
