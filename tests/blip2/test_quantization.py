"""Quantization plans: parsing, and what each plan does to a real tiny model."""

from pathlib import Path

import pytest

from blip2.errors import InvalidArgument
from blip2.quantization import Precision, QuantizationPlan, count_quantized_linears
from tests.blip2.conftest import loaded

NONE, INT8, INT4 = Precision.NONE, Precision.INT8, Precision.INT4


@pytest.mark.parametrize(
    ("text", "vision", "qformer", "llm", "int4_type"),
    [
        ("none", NONE, NONE, NONE, "nf4"),
        ("int8", INT8, NONE, INT8, "nf4"),
        ("int4", INT4, NONE, INT4, "nf4"),
        ("fp4", INT4, NONE, INT4, "fp4"),
        ("llm=int4,vision=int8", INT8, NONE, INT4, "nf4"),
        ("language_model=fp4, qformer=int8", NONE, INT8, INT4, "fp4"),
    ],
)
def test_plans_parse(text: str, vision: Precision, qformer: Precision, llm: Precision, int4_type: str) -> None:
    plan = QuantizationPlan.parse(text)
    assert (plan.vision, plan.qformer, plan.llm, plan.int4_type) == (vision, qformer, llm, int4_type)


@pytest.mark.parametrize(("text", "message"), [("int3", "unknown quantization"), ("eyes=int8", "unknown component")])
def test_bad_plans_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        QuantizationPlan.parse(text)


def test_the_language_model_precision_is_applied_while_loading() -> None:
    assert QuantizationPlan.parse("llm=int4,vision=int8").loading_precision() is INT4
    assert QuantizationPlan.parse("vision=int8").loading_precision() is INT8
    assert QuantizationPlan.parse("qformer=int8").loading_precision() is NONE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int8", {"vision": "int8", "qformer": "none", "llm": "int8"}),
        ("int4", {"vision": "int4", "qformer": "none", "llm": "int4"}),
        ("llm=int4,vision=int8", {"vision": "int8", "qformer": "none", "llm": "int4"}),
        ("qformer=int8", {"vision": "none", "qformer": "int8", "llm": "none"}),
    ],
)
def test_each_component_gets_its_own_precision(tiny_data_dir: Path, text: str, expected: dict[str, str]) -> None:
    counts = count_quantized_linears(loaded("tiny-opt", tiny_data_dir, text).model)
    for component, precision in expected.items():
        tally = counts[component]
        # Every linear layer of the component is at that precision, except the LM's output head.
        dominant = max(tally, key=lambda k: tally[k])
        assert dominant == precision, (component, tally)
    if expected["llm"] != "none":
        assert counts["llm"]["none"] == 1  # only lm_head stays exact


def test_quantized_models_are_smaller(tiny_data_dir: Path) -> None:
    sizes = {q: loaded("tiny-opt", tiny_data_dir, q).memory_footprint_bytes for q in ("none", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["none"]
