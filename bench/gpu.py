"""BLIP-2 at full size on a GPU without the hub: memory per precision, and captions per second through
the worker's batch path against Hugging Face's one-image `generate` loop.

    python -m bench.gpu                                   # opt-2.7b and flan-t5-xl sizes on cuda
    python -m bench.gpu --scale tiny --device cpu         # the same run at tiny sizes (checks the script)

For each family, a checkpoint with the real architecture's dimensions (ViT-g, the Q-Former, OPT-2.7b
or Flan-T5-XL; 32 query tokens, 224 px) is built with random weights directly on the device in
fp16, saved once in the hub's format, and loaded back through `blip2.loading` (the worker's own
path) at each precision. Generation is greedy with a fixed length (`min_new_tokens` =
`max_new_tokens`), so every variant does the same work. Printed, side by side:

- memory: the model's footprint per precision (the OPT-2.7b model card says about 7.2, 3.6 and
  1.8 GB for fp16, int8 and int4);
- captions/s: the worker's batch path (`worker.handlers.run_caption` on a batch) against the
  one-image loop users write with transformers (processor, `generate`, one image at a time);
- the fraction of the GPU's memory bandwidth a decode step reaches: the language model's weight
  bytes over the bandwidth of a device-to-device copy, against the measured time per new token;
- the speed-ups the field uses, each measured on the batch path: SDPA against eager attention, a
  static KV cache, and `torch.compile` of the language model over the static cache.

It must finish on a bare CUDA machine in under 8 minutes (`scripts/gpu_check.sh` runs it).
"""

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    T5Config,
)

from blip2 import vocab
from blip2.loading import LoadedModel, LoadOptions, load_model
from jobs.inputs import CaptionInput
from worker.handlers import Work, run_caption

IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Scale:
    """The dimensions a run builds: `full` is BLIP-2's own, `tiny` checks the script on a CPU."""

    vision: dict[str, Any]
    qformer: dict[str, Any]
    opt: dict[str, Any]
    t5: dict[str, Any]
    query_tokens: int
    image_size: int


SCALES = {
    # ViT-g/14 at 224 px, the 12-layer Q-Former, OPT-2.7b, Flan-T5-XL: the checkpoints' own configs.
    "full": Scale(
        vision={"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14},
        qformer={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "encoder_hidden_size": 1408},
        opt={"hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32, "num_attention_heads": 32,
             "word_embed_proj_dim": 2560, "vocab_size": 50272, "max_position_embeddings": 2048},
        t5={"d_model": 2048, "d_ff": 5120, "d_kv": 64, "num_heads": 32, "num_layers": 24, "num_decoder_layers": 24,
            "vocab_size": 32128},
        query_tokens=32,
        image_size=224,
    ),
    # Tens of millions of parameters: on a CPU, compute dominates a job as it does on a GPU
    # (bench/service.py measures the service against the model on it: `--model mid-opt`).
    "mid": Scale(
        vision={"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
                "image_size": 224, "patch_size": 16},
        qformer={"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 6,
                 "encoder_hidden_size": 384},
        opt={"hidden_size": 512, "ffn_dim": 2048, "num_hidden_layers": 6, "num_attention_heads": 8,
             "word_embed_proj_dim": 512, "vocab_size": 2112, "max_position_embeddings": 512},
        t5={"d_model": 512, "d_ff": 1024, "d_kv": 64, "num_heads": 8, "num_layers": 6, "num_decoder_layers": 6,
            "vocab_size": 2112},
        query_tokens=32,
        image_size=224,
    ),
    "tiny": Scale(
        vision={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "image_size": 64, "patch_size": 8},
        qformer={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "encoder_hidden_size": 64},
        opt={"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "word_embed_proj_dim": 64, "vocab_size": 2112, "max_position_embeddings": 256},
        t5={"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
            "vocab_size": 2112},
        query_tokens=8,
        image_size=64,
    ),
}  # fmt: skip


def main() -> None:
    args = _arguments()
    started = time.monotonic()
    device = torch.device(args.device)
    print(_device_line(device))
    bandwidth = copy_bandwidth(device)
    print(f"device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.tmp) as scratch:
        for family in args.families.split(","):
            checkpoint = build_checkpoint(family, SCALES[args.scale], device, Path(scratch) / family)
            _bench_family(args, family, checkpoint, device, bandwidth, started)
    print(f"total {time.monotonic() - started:.0f} s")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--families", default="opt,t5")
    parser.add_argument("--precisions", default="none,int8,int4", help="the first is the baseline")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=20, help="new tokens per caption (fixed)")
    parser.add_argument("--loop-images", type=int, default=8, help="images the one-image loop captions")
    parser.add_argument("--variants", default="eager,sdpa,static,compile", help="speed-ups tried on fp16 OPT")
    parser.add_argument("--budget-s", type=float, default=420, help="skip what is left after this long")
    parser.add_argument("--tmp", default=None, help="where the built checkpoints go (fast local disk)")
    return parser.parse_args()


# ---- building ---------------------------------------------------------------------------------


def build_checkpoint(family: str, scale: Scale, device: torch.device, path: Path) -> Path:
    """A BLIP-2 checkpoint of the scale's dimensions with random fp16 weights, made on `device` and saved."""
    started = time.monotonic()
    tokenizer = vocab.opt_tokenizer() if family == "opt" else vocab.t5_tokenizer()
    image_processor = BlipImageProcessor(
        size={"height": scale.image_size, "width": scale.image_size}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=scale.query_tokens)
    config = Blip2Config(
        vision_config=scale.vision,
        qformer_config=scale.qformer,
        text_config=_text_config(family, scale, tokenizer).to_dict(),
        num_query_tokens=scale.query_tokens,
        image_token_index=int(tokenizer.convert_tokens_to_ids("<image>")),  # type: ignore[arg-type]
    )
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(1234)  # the same weights every time, as blip2/tiny.py builds its checkpoints
    with _default_dtype(dtype), device:
        model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    _free(device)
    print(f"\n{family}: built {parameters / 1e9:.2f} B parameters in {time.monotonic() - started:.0f} s")
    return path


def _text_config(family: str, scale: Scale, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    if family == "opt":
        special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                   "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
        return OPTConfig(**scale.opt, **special)
    special = {"tie_word_embeddings": False, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.eos_token_id, "decoder_start_token_id": tokenizer.pad_token_id}  # fmt: skip
    return T5Config(**scale.t5, feed_forward_proj="gated-gelu", **special)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    precision: str
    memory_gb: float
    batch_per_s: float
    loop_per_s: float | None
    token_ms: float | None  # one decode step of the one-image loop
    weight_bytes: int


def _bench_family(
    args: argparse.Namespace, family: str, checkpoint: Path, device: torch.device, bandwidth: float, started: float
) -> None:
    rows = []
    for n, precision in enumerate(args.precisions.split(",")):
        if time.monotonic() - started > args.budget_s:
            print(f"  {precision}: skipped, past the {args.budget_s:.0f} s budget")
            continue
        lm = load_model(str(checkpoint), data_dir=checkpoint.parent, options=_options(device, precision))
        rows.append(_measure(args, lm, precision, with_loop=n == 0))
        if family == "opt" and n == 0 and args.variants:
            _variants(args, lm, started)
        del lm
        _free(device)
    _print(family, rows, bandwidth)


def _options(device: torch.device, precision: str) -> LoadOptions:
    dtype = "fp16" if device.type == "cuda" else "fp32"
    return LoadOptions(device=str(device), dtype=dtype, quantize=precision)


def _measure(args: argparse.Namespace, lm: LoadedModel, precision: str, *, with_loop: bool) -> Row:
    images = _images(args.batch)
    batch_s = _seconds(lambda: _batch_path(lm, images, args.tokens))
    loop, token_ms = None, None
    if with_loop:
        loop_s = _seconds(lambda: _one_image_loop(lm, images[: args.loop_images], args.tokens), repeats=1)
        loop = args.loop_images / loop_s
        token_ms = 1000 * loop_s / (args.loop_images * args.tokens)
    weights = sum(p.numel() * p.element_size() for p in lm.model.language_model.parameters())
    memory = lm.memory_footprint_bytes / 1e9
    return Row(precision, memory, args.batch / batch_s, loop, token_ms, weights)


def _batch_path(lm: LoadedModel, images: list[Image.Image], tokens: int) -> None:
    """The worker's own handler on one batch, as a batch of caption jobs runs."""
    job = CaptionInput.model_validate(
        {
            "image_id": "00000000-0000-0000-0000-000000000000",
            "num_beams": 1,
            "max_new_tokens": tokens,
            "min_new_tokens": tokens,
        }
    )
    run_caption(lm, [Work(input=job, images=[image]) for image in images])


def _one_image_loop(lm: LoadedModel, images: list[Image.Image], tokens: int) -> None:
    """What a user writes with transformers alone: the processor and `generate`, one image at a time."""
    for image in images:
        inputs = lm.processor(images=image, text="", return_tensors="pt").to(lm.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.dtype)
        with torch.inference_mode():
            lm.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=1, do_sample=False)


def _variants(args: argparse.Namespace, lm: LoadedModel, started: float) -> None:
    """The batch path under each speed-up, against eager attention."""
    images = _images(args.batch)
    results: dict[str, float] = {}
    for variant in args.variants.split(","):
        if time.monotonic() - started > args.budget_s:
            print(f"  variant {variant}: skipped, past the budget")
            continue
        try:
            with _variant(lm, variant):
                results[variant] = args.batch / _seconds(lambda: _batch_path(lm, images, args.tokens))
        except Exception as exc:  # a speed-up this torch/transformers pair cannot do is a result too
            print(f"  variant {variant}: failed ({type(exc).__name__}: {str(exc)[:200]})")
    base = results.get("eager") or next(iter(results.values()), 0.0)
    print(f"  {'variant (fp16 batch path)':<30} {'captions/s':>10} {'vs eager':>9}")
    for name, rate in results.items():
        print(f"  {name:<30} {rate:>10.1f} {rate / base if base else 0:>8.2f}x")


@contextmanager
def _variant(lm: LoadedModel, name: str) -> Iterator[None]:
    model, language = lm.model, lm.model.language_model
    forward, config = language.forward, model.generation_config
    cache = getattr(config, "cache_implementation", None)
    model.set_attn_implementation("eager" if name == "eager" else "sdpa")
    if name in ("static", "compile"):
        config.cache_implementation = "static"
    if name == "compile":
        language.forward = torch.compile(forward, mode="reduce-overhead")
    try:
        yield
    finally:
        language.forward, config.cache_implementation = forward, cache
        model.set_attn_implementation("sdpa")


def copy_bandwidth(device: torch.device, size: int = 1 << 30) -> float:
    """Bytes per second a device-to-device copy moves (read + write): the practical memory-bandwidth ceiling."""
    size = size if device.type == "cuda" else size // 16
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = _seconds(lambda: target.copy_(source))
    _free(device)
    return 2 * size / seconds


def _seconds(work: Callable[[], Any], repeats: int = 3) -> float:
    work()  # warm-up: allocations, kernel selection, compilation
    _synchronize()
    timings = []
    for _ in range(repeats):
        begun = time.perf_counter()
        work()
        _synchronize()
        timings.append(time.perf_counter() - begun)
    return statistics.median(timings)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _images(count: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(0)
    side = 480
    return [
        Image.fromarray(torch.randint(0, 255, (side, side, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(count)
    ]


def _device_line(device: torch.device) -> str:
    if device.type != "cuda":
        return f"device {device} (torch {torch.__version__})"
    properties = torch.cuda.get_device_properties(device)
    return f"device {properties.name}, {properties.total_memory / 2**30:.0f} GiB (torch {torch.__version__})"


def _print(family: str, rows: list[Row], bandwidth: float) -> None:
    if not rows:
        return
    base = rows[0]
    print(f"  {'precision':<10} {'memory GB':>9} {'captions/s batch':>16} {'vs base':>8} {'one-image loop':>14} "
          f"{'batch gain':>10}")  # fmt: skip
    for row in rows:
        loop = f"{row.loop_per_s:>14.1f}" if row.loop_per_s else f"{'-':>14}"
        gain = f"{row.batch_per_s / row.loop_per_s:>9.1f}x" if row.loop_per_s else f"{'-':>10}"
        print(f"  {row.precision:<10} {row.memory_gb:>9.2f} {row.batch_per_s:>16.1f} "
              f"{row.batch_per_s / base.batch_per_s:>7.2f}x {loop} {gain}")  # fmt: skip
    if base.token_ms:
        ideal_ms = 1000 * base.weight_bytes / bandwidth  # a decode step reads every LM weight once
        print(f"  {family} decode step, one image: {base.token_ms:.1f} ms; reading the language model's "
              f"{base.weight_bytes / 1e9:.1f} GB at copy bandwidth takes {ideal_ms:.1f} ms: "
              f"{ideal_ms / base.token_ms:.0%} of the bandwidth limit")  # fmt: skip


if __name__ == "__main__":
    main()
