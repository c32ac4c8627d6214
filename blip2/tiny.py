"""Tiny and small BLIP-2 checkpoints, built offline and deterministically, in the real format.

Each checkpoint is a directory exactly like a hub checkpoint (config.json, model.safetensors,
generation_config.json, tokenizer and processor files), so it loads through the very same
`from_pretrained` path as `Salesforce/blip2-opt-2.7b`. The weights are random (seeded), the
tokenizers are real (learned from `blip2.corpus`), and every linear layer is at least 64 wide so
that bitsandbytes can quantize it to 4 bits on a CPU.

Two sizes: `tiny-*` (every family, for tests: as small as a real layout allows) and `small-*`
(OPT and retrieval, the bases of the demo models: wide and deep enough to learn what a shape is,
yet trained on two CPU cores in minutes).

    python -m blip2.tiny ./data        # builds all of them into ./data/models/
"""

import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
)

from blip2 import corpus, vocab
from blip2.errors import InvalidArgument
from blip2.registry import (
    SMALL_QUERY_TOKENS,
    SMALL_TEXT_POSITIONS,
    TINY_QUERY_TOKENS,
    TINY_TEXT_POSITIONS,
    is_checkpoint_dir,
)

TINY_NAMES = ("tiny-opt", "tiny-t5", "tiny-instruct", "tiny-itm")
SMALL_NAMES = ("small-opt", "small-itm")
SEED = 1234
# CLIP's normalisation, as every BLIP-2 checkpoint's image processor uses.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Size:
    """How big every component of a built checkpoint is."""

    width: int  # hidden size of every component
    ffn: int  # feed-forward width
    vision_layers: int
    qformer_layers: int
    text_layers: int  # the language model's (each of T5's encoder and decoder)
    heads: int
    image_size: int  # pixels per side
    patch_size: int  # pixels per side of a ViT patch
    query_tokens: int
    text_positions: int  # the decoder-only language model's positions
    init_std: float  # spread of the random weights (see `_spread_weights`)
    dropout: float | None  # every component's; None: transformers' defaults
    corpus: Callable[[], list[str]]  # what the tokenizers learn from
    grid_positions: float | None = None  # the ViT's position embeddings drawn as a 2-D sine grid of this amplitude


# The smallest bitsandbytes 4-bit accepts on CPU: 64 wide, two layers, 8x8 patches of 8 pixels.
TINY = Size(width=64, ffn=128, vision_layers=2, qformer_layers=2, text_layers=2, heads=4, image_size=64,
            patch_size=8, query_tokens=TINY_QUERY_TOKENS, text_positions=TINY_TEXT_POSITIONS, init_std=0.2,
            dropout=None, corpus=corpus.sentences)  # fmt: skip
# Room to tell a star from a circle and bind each colour to its shape and place: twice as wide,
# four vision layers, four times the feed-forward width. Patches stay 8 pixels: 4-pixel ones cost
# three to four times as much per step on a CPU, and steps are what the demo's budget is short of.
# Weights at about 1/sqrt(width): at transformers' std 0.02 a 128-wide model's attention starts
# uniform and its loss sits on the text prior for hundreds of steps. No dropout: the demo models
# underfit, they never see an example often enough to memorise it.
SMALL = Size(width=128, ffn=512, vision_layers=4, qformer_layers=2, text_layers=2, heads=4, image_size=64,
             patch_size=8, query_tokens=SMALL_QUERY_TOKENS, text_positions=SMALL_TEXT_POSITIONS, init_std=0.088,
             dropout=0.0, corpus=corpus.demo_sentences, grid_positions=2.0)  # fmt: skip


def checkpoint_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "models" / name


def ensure_tiny_checkpoint(name: str, data_dir: Path) -> Path:
    """The built checkpoint's directory (tiny or small), built first if it is not there yet."""
    path = checkpoint_dir(data_dir, name)
    if not is_checkpoint_dir(path):
        build_tiny_checkpoint(name, path)
    return path


def build_tiny_checkpoint(name: str, path: Path) -> Path:
    """Build one tiny or small checkpoint into `path`, atomically (a partial build is never visible)."""
    if name not in _BUILDERS:
        choices = ", ".join((*TINY_NAMES, *SMALL_NAMES))
        raise InvalidArgument(f"no tiny checkpoint called {name!r}; choose from {choices}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private staging directory per build: two processes building at once never mix files.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    torch.manual_seed(SEED)
    builder, size = _BUILDERS[name]
    model, processor = builder(size)
    _spread_weights(model, size.init_std)
    if size.grid_positions is not None:
        _grid_positions(model, size.grid_positions)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    if path.exists() and not is_checkpoint_dir(path):  # left by an interrupted build
        shutil.rmtree(path)
    try:
        staging.rename(path)
    except OSError:  # another process finished the same build first; its copy is identical
        shutil.rmtree(staging)
    return path


def _spread_weights(model: PreTrainedModel, std: float) -> None:
    """Re-draw every weight matrix from N(0, std).

    With transformers' own initialisation (std 0.02, zero query tokens) a random model emits
    one token whatever it sees; the tiny models' wider spread makes their outputs depend on the
    image and the prompt, so tests can tell a right answer (batched = alone) from a constant one.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, std)


def _grid_positions(model: PreTrainedModel, amplitude: float) -> None:
    """Give every patch a position embedding that says where it is, about as large as what it shows.

    The Q-Former's queries cross-attend to the patches as a set: where a patch lies reaches them
    only through its features. Random position embeddings at the weights' spread are a fourteenth
    of a patch's pixel features; the demo models trained from them answered "where is ...?" by
    chance (a linear read of one patch's features found its row 31% of the time). A sine grid
    (MAE's fixed 2-D embedding: half the channels the row, half the column, at geometric
    frequencies) of the same size says where from the first step (85% after training); it still trains.
    """
    embedding = model.get_parameter("vision_model.embeddings.position_embedding")  # (1, 1 + patches, width)
    grid = math.isqrt(embedding.shape[1] - 1)
    with torch.no_grad():
        embedding[0, 1:] = _sine_grid(grid, embedding.shape[2]) * amplitude
        embedding[0, 0] = 0.0  # the class token's: it has no place


def _sine_grid(grid: int, width: int) -> torch.Tensor:
    """(grid * grid, width): row-major patches; sin and cos of the row, then of the column."""
    frequencies = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), columns.flatten()):
        angles = coordinate[:, None].double() * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def _image_processor(size: Size) -> BlipImageProcessorPil:
    # The PIL backend by name: `BlipImageProcessor` is the torchvision one, which this project does not
    # install, and asking for it logs a warning that advises installing torchvision. Saved, both are
    # "BlipImageProcessor", as on the hub; loading picks the backend the machine has.
    return BlipImageProcessorPil(
        size={"height": size.image_size, "width": size.image_size}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )


def _vision_config(size: Size) -> dict[str, object]:
    return dict(
        hidden_size=size.width,
        intermediate_size=size.ffn,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )


def _qformer_config(size: Size, vocab_size: int = 1088, text_input: bool = False) -> dict[str, object]:
    return _dropout(size, "hidden_dropout_prob", "attention_probs_dropout_prob") | dict(
        vocab_size=vocab_size,
        hidden_size=size.width,
        num_hidden_layers=size.qformer_layers,
        num_attention_heads=size.heads,
        intermediate_size=size.ffn,
        cross_attention_frequency=1,
        max_position_embeddings=128,
        encoder_hidden_size=size.width,
        use_qformer_text_input=text_input,
    )


def _opt_config(size: Size, tokenizer: PreTrainedTokenizerBase) -> OPTConfig:
    settings: dict[str, Any] = dict(
        vocab_size=_padded(len(tokenizer)),
        hidden_size=size.width,
        word_embed_proj_dim=size.width,
        ffn_dim=size.ffn,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.heads,
        max_position_embeddings=size.text_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return OPTConfig(**settings | _dropout(size, "dropout", "attention_dropout"))


def _dropout(size: Size, *names: str) -> dict[str, Any]:
    """Config entries that set these dropout rates to the size's (none: the config's defaults)."""
    return {} if size.dropout is None else dict.fromkeys(names, size.dropout)


def _t5_config(size: Size, tokenizer: PreTrainedTokenizerBase) -> T5Config:
    settings: dict[str, Any] = dict(
        vocab_size=_padded(len(tokenizer)),
        d_model=size.width,
        d_kv=size.width // size.heads,
        d_ff=size.ffn,
        num_layers=size.text_layers,
        num_decoder_layers=size.text_layers,
        num_heads=size.heads,
        feed_forward_proj="gated-gelu",  # as Flan-T5
        tie_word_embeddings=False,  # as Flan-T5 (transformers 5 reads it as "don't rescale decoder outputs")
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5Config(**settings)


def _image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of the `<image>` token the processor added: the model replaces it by Q-Former outputs."""
    token_id = tokenizer.convert_tokens_to_ids("<image>")
    assert isinstance(token_id, int)
    return token_id


def _padded(n: int) -> int:
    """Vocabulary rounded up to a multiple of 64, as real checkpoints pad theirs."""
    return (n + 63) // 64 * 64


def _build_blip2(
    size: Size, tokenizer: PreTrainedTokenizerBase, text_config: PretrainedConfig
) -> tuple[PreTrainedModel, Blip2Processor]:
    """A BLIP-2 captioning checkpoint (Blip2ForConditionalGeneration) around the given language model."""
    processor = Blip2Processor(_image_processor(size), tokenizer, num_query_tokens=size.query_tokens)
    config = Blip2Config(
        vision_config=_vision_config(size),
        qformer_config=_qformer_config(size),
        text_config=text_config.to_dict(),
        num_query_tokens=size.query_tokens,
        image_token_index=_image_token_id(tokenizer),
    )
    return Blip2ForConditionalGeneration(config), processor


def _build_opt(size: Size) -> tuple[PreTrainedModel, Blip2Processor]:
    tokenizer = vocab.opt_tokenizer(corpus=size.corpus())
    return _build_blip2(size, tokenizer, _opt_config(size, tokenizer))


def _build_t5(size: Size) -> tuple[PreTrainedModel, Blip2Processor]:
    tokenizer = vocab.t5_tokenizer()
    return _build_blip2(size, tokenizer, _t5_config(size, tokenizer))


def _build_instruct(size: Size) -> tuple[PreTrainedModel, InstructBlipProcessor]:
    tokenizer = vocab.t5_tokenizer()
    qformer_tokenizer = vocab.bert_tokenizer()
    processor = InstructBlipProcessor(
        _image_processor(size), tokenizer, qformer_tokenizer, num_query_tokens=size.query_tokens
    )
    config = InstructBlipConfig(
        vision_config=_vision_config(size),
        qformer_config=_qformer_config(size, vocab_size=_padded(len(qformer_tokenizer))),
        text_config=_t5_config(size, tokenizer).to_dict(),
        num_query_tokens=size.query_tokens,
        image_token_index=_image_token_id(tokenizer),
    )
    return InstructBlipForConditionalGeneration(config), processor


def _build_itm(size: Size) -> tuple[PreTrainedModel, Blip2Processor]:
    tokenizer = vocab.bert_tokenizer(size.corpus())
    processor = Blip2Processor(_image_processor(size), tokenizer, num_query_tokens=size.query_tokens)
    opt_tokenizer = vocab.opt_tokenizer(corpus=size.corpus())
    config = Blip2Config(
        vision_config=_vision_config(size),
        qformer_config=_qformer_config(size, vocab_size=_padded(len(tokenizer)), text_input=True),
        text_config=_opt_config(size, opt_tokenizer).to_dict(),  # unused by the retrieval model
        num_query_tokens=size.query_tokens,
        image_text_hidden_size=size.width,
        image_token_index=_image_token_id(tokenizer),
    )
    return Blip2ForImageTextRetrieval(config), processor


_Builder = Callable[[Size], tuple[PreTrainedModel, Blip2Processor | InstructBlipProcessor]]
_BUILDERS: dict[str, tuple[_Builder, Size]] = {
    "tiny-opt": (_build_opt, TINY),
    "tiny-t5": (_build_t5, TINY),
    "tiny-instruct": (_build_instruct, TINY),
    "tiny-itm": (_build_itm, TINY),
    "small-opt": (_build_opt, SMALL),
    "small-itm": (_build_itm, SMALL),
}


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0] if argv else "data")
    for name in (*TINY_NAMES, *SMALL_NAMES):
        print(ensure_tiny_checkpoint(name, data_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
