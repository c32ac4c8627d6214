"""Tiny BLIP-2 checkpoints, built offline and deterministically, in the real format.

Each tiny checkpoint is a directory exactly like a hub checkpoint (config.json,
model.safetensors, generation_config.json, tokenizer and processor files), so it loads
through the very same `from_pretrained` path as `Salesforce/blip2-opt-2.7b`. The weights are
random (seeded), the tokenizers are real (learned from `blip2.corpus`), and every linear
layer is at least 64 wide so that bitsandbytes can quantize it to 4 bits on a CPU.

    python -m blip2.tiny ./data        # builds all four into ./data/models/
"""

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipImageProcessor,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
)

from blip2 import vocab
from blip2.errors import InvalidArgument
from blip2.registry import TINY_QUERY_TOKENS, TINY_TEXT_POSITIONS, is_checkpoint_dir

TINY_NAMES = ("tiny-opt", "tiny-t5", "tiny-instruct", "tiny-itm")
SEED = 1234
IMAGE_SIZE = 64  # pixels; 8x8 patches of 8 pixels
NUM_QUERY_TOKENS = TINY_QUERY_TOKENS
WIDTH = 64  # hidden size of every component: the smallest bitsandbytes 4-bit accepts on CPU
FFN = 128
# CLIP's normalisation, as every BLIP-2 checkpoint's image processor uses.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def checkpoint_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "models" / name


def ensure_tiny_checkpoint(name: str, data_dir: Path) -> Path:
    """The tiny checkpoint's directory, built first if it is not there yet."""
    path = checkpoint_dir(data_dir, name)
    if not is_checkpoint_dir(path):
        build_tiny_checkpoint(name, path)
    return path


def build_tiny_checkpoint(name: str, path: Path) -> Path:
    """Build one tiny checkpoint into `path`, atomically (a partial build is never visible)."""
    if name not in _BUILDERS:
        raise InvalidArgument(f"no tiny checkpoint called {name!r}; choose from {', '.join(TINY_NAMES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private staging directory per build: two processes building at once never mix files.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    torch.manual_seed(SEED)
    model, processor = _BUILDERS[name]()
    _spread_weights(model)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    if path.exists() and not is_checkpoint_dir(path):  # left by an interrupted build
        shutil.rmtree(path)
    try:
        staging.rename(path)
    except OSError:  # another process finished the same build first; its copy is identical
        shutil.rmtree(staging)
    return path


def _spread_weights(model: PreTrainedModel, std: float = 0.2) -> None:
    """Re-draw every weight matrix from N(0, std).

    With transformers' own initialisation (std 0.02, zero query tokens) a random model emits
    one token whatever it sees; a wider spread makes its outputs depend on the image and the
    prompt, so tests can tell a right answer (batched = alone) from a constant one.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, std)


def _image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )


def _vision_config() -> dict[str, object]:
    return dict(
        hidden_size=WIDTH,
        intermediate_size=FFN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )


def _qformer_config(vocab_size: int = 1088, text_input: bool = False) -> dict[str, object]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=FFN,
        cross_attention_frequency=1,
        max_position_embeddings=128,
        encoder_hidden_size=WIDTH,
        use_qformer_text_input=text_input,
    )


def _opt_config(tokenizer: PreTrainedTokenizerBase) -> OPTConfig:
    return OPTConfig(
        vocab_size=_padded(len(tokenizer)),
        hidden_size=WIDTH,
        word_embed_proj_dim=WIDTH,
        ffn_dim=FFN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_TEXT_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _t5_config(tokenizer: PreTrainedTokenizerBase) -> T5Config:
    settings: dict[str, Any] = dict(
        vocab_size=_padded(len(tokenizer)),
        d_model=WIDTH,
        d_kv=16,
        d_ff=FFN,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
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
    tokenizer: PreTrainedTokenizerBase, text_config: PretrainedConfig
) -> tuple[PreTrainedModel, Blip2Processor]:
    """A BLIP-2 captioning checkpoint (Blip2ForConditionalGeneration) around the given language model."""
    processor = Blip2Processor(_image_processor(), tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    config = Blip2Config(
        vision_config=_vision_config(),
        qformer_config=_qformer_config(),
        text_config=text_config.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=_image_token_id(tokenizer),
    )
    return Blip2ForConditionalGeneration(config), processor


def _build_opt() -> tuple[PreTrainedModel, Blip2Processor]:
    tokenizer = vocab.opt_tokenizer()
    return _build_blip2(tokenizer, _opt_config(tokenizer))


def _build_t5() -> tuple[PreTrainedModel, Blip2Processor]:
    tokenizer = vocab.t5_tokenizer()
    return _build_blip2(tokenizer, _t5_config(tokenizer))


def _build_instruct() -> tuple[PreTrainedModel, InstructBlipProcessor]:
    tokenizer = vocab.t5_tokenizer()
    qformer_tokenizer = vocab.bert_tokenizer()
    processor = InstructBlipProcessor(
        _image_processor(), tokenizer, qformer_tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    config = InstructBlipConfig(
        vision_config=_vision_config(),
        qformer_config=_qformer_config(vocab_size=_padded(len(qformer_tokenizer))),
        text_config=_t5_config(tokenizer).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=_image_token_id(tokenizer),
    )
    return InstructBlipForConditionalGeneration(config), processor


def _build_itm() -> tuple[PreTrainedModel, Blip2Processor]:
    tokenizer = vocab.bert_tokenizer()
    processor = Blip2Processor(_image_processor(), tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    config = Blip2Config(
        vision_config=_vision_config(),
        qformer_config=_qformer_config(vocab_size=_padded(len(tokenizer)), text_input=True),
        text_config=_opt_config(vocab.opt_tokenizer()).to_dict(),  # unused by the retrieval model
        num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=WIDTH,
        image_token_index=_image_token_id(tokenizer),
    )
    return Blip2ForImageTextRetrieval(config), processor


_BUILDERS: dict[str, Callable[[], tuple[PreTrainedModel, Blip2Processor | InstructBlipProcessor]]] = {
    "tiny-opt": _build_opt,
    "tiny-t5": _build_t5,
    "tiny-instruct": _build_instruct,
    "tiny-itm": _build_itm,
}


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0] if argv else "data")
    for name in TINY_NAMES:
        print(ensure_tiny_checkpoint(name, data_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
