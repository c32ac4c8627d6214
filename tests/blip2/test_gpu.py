"""On a CUDA device: half precision, bitsandbytes int8/int4, and batching, as users run them.

Skipped without CUDA; run through the device tool: `.venv/bin/pytest -m gpu tests/blip2/test_gpu.py`.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image

from blip2.caption import caption
from blip2.decoding import DecodingOptions
from blip2.loading import LoadOptions, load_model
from blip2.matching import rank_texts
from blip2.quantization import count_quantized_linears
from blip2.vqa import answer

pytestmark = pytest.mark.gpu
GREEDY = DecodingOptions(max_new_tokens=6, min_new_tokens=3, num_beams=1)


def test_auto_picks_cuda_in_half_precision(tiny_data_dir: Path) -> None:
    lm = load_model("tiny-opt", data_dir=tiny_data_dir)
    assert lm.device.type == "cuda" and lm.dtype in (torch.bfloat16, torch.float16)
    assert next(lm.model.language_model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("quantize", ["int8", "int4", "llm=int4,vision=int8"])
def test_quantized_on_cuda(tiny_data_dir: Path, photos: dict[str, Image.Image], quantize: str) -> None:
    lm = load_model("tiny-t5", data_dir=tiny_data_dir, options=LoadOptions(quantize=quantize))
    counts = count_quantized_linears(lm.model)
    assert counts["llm"]["int8"] + counts["llm"]["int4"] > 0
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
