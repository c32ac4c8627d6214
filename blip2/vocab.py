"""Real tokenizers for the tiny checkpoints, learned offline from `blip2.corpus`.

Each builder returns a transformers tokenizer of the same class and special-token layout
as the real BLIP-2 checkpoint it stands in for:

- OPT: byte-level BPE (`GPT2Tokenizer`), `</s>` prepended as BOS, `<pad>` = 1, `</s>` = 2.
- Flan-T5: Unigram over Metaspace pieces (`T5Tokenizer`), `<pad>` = 0, `</s>` = 1 appended.
- Q-Former: lower-cased WordPiece (`BertTokenizer`), `[CLS] ... [SEP]`, `[PAD]` = 0.
"""

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizer, GPT2Tokenizer, T5Tokenizer

from blip2.corpus import sentences


def opt_tokenizer(vocab_size: int = 2048, corpus: Sequence[str] | None = None) -> GPT2Tokenizer:
    """A byte-level BPE tokenizer laid out like OPT's (ids 0-3: <s> <pad> </s> <unk>), learned from
    `corpus` (default: `blip2.corpus.sentences()`)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or sentences(), trainer)
    # OPT prepends </s> as its beginning-of-sequence token.
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)]
    )
    return GPT2Tokenizer(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer laid out like Flan-T5's (ids 0-2: <pad> </s> <unk>; </s> appended)."""
    tok = Tokenizer(models.Unigram(_unigram_pieces(), unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5Tokenizer(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)


def _unigram_pieces() -> list[tuple[str, float]]:
    """Whole words scored by their log frequency, plus every printable character as a fallback.

    The Unigram trainer prunes a corpus this small down to single letters; scoring the pieces
    from word counts directly gives the whole-word segmentation a real T5 vocabulary would.
    """
    counts = Counter(word for sentence in sentences() for word in _words(sentence))
    total = sum(counts.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{word}", math.log(n / total)) for word, n in counts.most_common()]
    pieces += [(word, math.log(n / total) - 1.0) for word, n in counts.most_common()]
    rare = math.log(1 / total) - 5.0  # characters: only when nothing longer matches
    pieces += [(c, rare) for c in string.printable.strip()] + [("\u2581", rare)]
    unique: dict[str, float] = {}
    for piece, score in pieces:
        unique.setdefault(piece, score)  # the first (highest) score wins for duplicates
    return list(unique.items())


def bert_tokenizer(corpus: Sequence[str] | None = None) -> BertTokenizer:
    """A lower-casing WordPiece tokenizer laid out like bert-base-uncased ([PAD] = 0), its words
    from `corpus` (default: `blip2.corpus.sentences()`)."""
    tok = Tokenizer(models.WordPiece(_wordpiece_vocab(corpus or sentences()), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return BertTokenizer(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )


def _wordpiece_vocab(corpus: Sequence[str]) -> dict[str, int]:
    """Specials, every character alone and as a continuation, then the corpus's words.

    Written out rather than trained: the WordPiece trainer numbers its alphabet in hash order,
    so two builds would differ; this vocabulary is the same on every build.
    """
    words = Counter(w.lower() for sentence in corpus for w in _words(sentence))
    characters = sorted(set(string.printable.strip().lower()))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += characters + [f"##{c}" for c in characters]
    tokens += [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if w not in tokens]
    return {token: i for i, token in enumerate(tokens)}


def _words(sentence: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", sentence)
