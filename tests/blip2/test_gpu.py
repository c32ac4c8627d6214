"""On a CUDA device: half precision, bitsandbytes int8/int4, and batching, as users run them.

Skipped without CUDA; run through the device tool: `.venv/bin/pytest -m gpu tests/blip2/test_gpu.py`.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from blip2.caption import caption
from blip2.data.records import CaptionRecord
from blip2.decoding import DecodingOptions
from blip2.loading import LoadOptions, load_model
from blip2.matching import rank_texts
from blip2.quantization import count_quantized_linears
from blip2.tiny import ensure_tiny_checkpoint
from blip2.training import TrainConfig, train
from blip2.vqa import answer

pytestmark = pytest.mark.gpu
GREEDY = DecodingOptions(max_new_tokens=6, min_new_tokens=3, num_beams=1)


def test_auto_picks_cuda_in_half_precision(tiny_data_dir: Path) -> None:
    lm = load_model("tiny-opt", data_dir=tiny_data_dir)
    assert lm.device.type == "cuda" and lm.dtype in (torch.bfloat16, torch.float16)
    assert next(lm.model.language_model.parameters()).device.type == "cuda"


def test_a_model_spread_over_the_gpus_runs(tiny_data_dir: Path, photos: dict[str, Image.Image]) -> None:
    """`--device balanced`: accelerate places the layers over every visible GPU (one here, all of them on
    a bigger machine); inputs go to the vision encoder's device and the caption comes out whole."""
    lm = load_model("tiny-opt", data_dir=tiny_data_dir, options=LoadOptions(device="balanced"))
    assert lm.device.type == "cuda" and set(lm.model.hf_device_map.values()) <= set(range(torch.cuda.device_count()))
    on_one = load_model("tiny-opt", data_dir=tiny_data_dir)
    pictures = list(photos.values())
    assert [r.captions for r in caption(lm, pictures, decoding=GREEDY)] == [
        r.captions for r in caption(on_one, pictures, decoding=GREEDY)
    ]


@pytest.mark.parametrize("quantize", ["int8", "int4", "llm=int4,vision=int8"])
def test_quantized_on_cuda(tiny_data_dir: Path, photos: dict[str, Image.Image], quantize: str) -> None:
    lm = load_model("tiny-t5", data_dir=tiny_data_dir, options=LoadOptions(quantize=quantize))
    counts = count_quantized_linears(lm.model)
    assert counts["llm"]["int8"] + counts["llm"]["int4"] > 0
    # LLM.int8() multiplies in fp16, so int8 anywhere means fp16 activations (no per-call casts).
    assert lm.dtype == (torch.float16 if "int8" in quantize else torch.bfloat16)
    results = caption(lm, list(photos.values()), decoding=GREEDY)
    assert all(r.captions[0] for r in results)


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_batched_equals_alone_on_cuda(tiny_data_dir: Path, photos: dict[str, Image.Image], quantize: str) -> None:
    lm = load_model("tiny-opt", data_dir=tiny_data_dir, options=LoadOptions(quantize=quantize, dtype="fp32"))
    images = list(photos.values())
    questions = ["what is it?", "what colour is the thing on the left of the picture?", "where?"]
    batched = [a.text for a in answer(lm, images, questions, decoding=GREEDY)]
    alone = [answer(lm, [i], [q], decoding=GREEDY)[0].text for i, q in zip(images, questions, strict=True)]
    assert batched == alone


def test_matching_on_cuda_agrees_with_cpu(tiny_data_dir: Path, photos: dict[str, Image.Image]) -> None:
    texts = ["a cat", "an astronaut", "a cup of coffee"]
    gpu = load_model("tiny-itm", data_dir=tiny_data_dir, options=LoadOptions(dtype="fp32"))
    cpu = load_model("tiny-itm", data_dir=tiny_data_dir, options=LoadOptions(device="cpu"))
    on_gpu = {s.index: s for s in rank_texts(gpu, photos["chelsea"], texts)}
    on_cpu = {s.index: s for s in rank_texts(cpu, photos["chelsea"], texts)}
    for index, score in on_cpu.items():
        assert on_gpu[index].itm == pytest.approx(score.itm, abs=1e-3)


def test_training_on_cuda_in_mixed_precision(tmp_path: Path) -> None:
    """Autocast (bf16 on Hopper), fp32 master weights: the loss falls and the saved model captions on CUDA."""
    ensure_tiny_checkpoint("tiny-opt", tmp_path / "data")
    records = []
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "circle")]):
        image = Image.new("RGB", (64, 64), "white")
        (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(
            (12, 12, 52, 52), fill=colour
        )
        image.save(tmp_path / f"{i}.png")
        records.append(
            CaptionRecord(image_id=str(i), image_path=tmp_path / f"{i}.png", captions=[f"a {colour} {shape}"])
        )
    lm = load_model("tiny-opt", data_dir=tmp_path / "data")
    config = TrainConfig(max_steps=40, batch_size=3, lr=3e-3, warmup_steps=3, checkpoint_every=0)
    result = train(lm, records, [], config, output_dir=tmp_path / "out", work_dir=tmp_path / "work")
    losses = result.losses
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    trained = load_model(str(tmp_path / "out"), data_dir=tmp_path / "data")
    assert trained.device.type == "cuda"
    assert caption(trained, [Image.open(records[0].image_path)], decoding=GREEDY)[0].captions[0]
