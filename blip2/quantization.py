"""Quantization plans: each BLIP-2 component (vision encoder, Q-Former, language model) at its own precision.

BLIP-2 is three models glued by the Q-Former, so they need not share a precision: the
language model holds most of the weights (int4 saves the most), the vision encoder
tolerates int8 well, and the small Q-Former is best left in full precision (transformers
keeps it in fp32 for that reason). Plans are written as one precision for the whole model
(`int8`, `int4`, `nf4`, `fp4`) or per component (`llm=int4,vision=int8,qformer=none`).

bitsandbytes is imported only inside the functions that quantize, so an unquantized model
never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from blip2.errors import InvalidArgument, QuantizationUnavailable

if TYPE_CHECKING:  # torch is imported by the functions that quantize: parsing a plan needs none
    import torch
    from torch import nn


class Precision(StrEnum):
    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"


# Module names of each component inside the transformers BLIP-2 classes.
COMPONENT_MODULES = {
    "vision": ("vision_model",),
    "qformer": ("qformer",),
    "llm": ("language_model", "language_projection"),
}
_ALIASES = {"language_model": "llm", "lm": "llm", "vit": "vision", "q-former": "qformer"}


@dataclass(frozen=True)
class QuantizationPlan:
    """The precision of each component; `int4_type` is nf4 or fp4 for every int4 part."""

    vision: Precision = Precision.NONE
    qformer: Precision = Precision.NONE
    llm: Precision = Precision.NONE
    int4_type: str = "nf4"

    @classmethod
    def parse(cls, text: str) -> QuantizationPlan:
        """`none`, `int8`, `int4`, `nf4`, `fp4`, or `component=precision,...`."""
        text = text.strip().lower()
        if "=" in text:
            return cls._parse_components(text)
        if text in ("nf4", "fp4"):
            return cls(vision=Precision.INT4, llm=Precision.INT4, int4_type=text)
        precision = _precision(text)
        # One precision for the model: the Q-Former stays full precision, as in transformers.
        return cls(vision=precision, llm=precision)

    @classmethod
    def _parse_components(cls, text: str) -> QuantizationPlan:
        fields: dict[str, Any] = {}
        for part in text.split(","):
            component, _, value = part.partition("=")
            component = _ALIASES.get(component.strip(), component.strip())
            if component not in COMPONENT_MODULES:
                raise InvalidArgument(
                    f"unknown component {component!r} in quantization {text!r}; use vision, qformer, llm"
                )
            if value.strip() in ("nf4", "fp4"):
                fields["int4_type"] = value.strip()
                value = "int4"
            fields[component] = _precision(value.strip())
        return cls(**fields)

    def __str__(self) -> str:
        if not self.is_quantized:
            return "none"
        parts = [f"{c}={getattr(self, c).value}" for c in COMPONENT_MODULES]
        return ",".join(parts) + (f" ({self.int4_type})" if Precision.INT4 in self.precisions() else "")

    def precisions(self) -> set[Precision]:
        return {self.vision, self.qformer, self.llm}

    @property
    def is_quantized(self) -> bool:
        return self.precisions() != {Precision.NONE}

    def modules_at(self, precision: Precision) -> list[str]:
        return [m for c, mods in COMPONENT_MODULES.items() if getattr(self, c) is precision for m in mods]

    def loading_precision(self) -> Precision:
        """The precision transformers applies while loading: the language model's if it has one.

        Quantizing while loading never holds the full-precision language model in memory,
        which is what makes a 7B model fit; any other precision is applied after loading.
        """
        if self.llm is not Precision.NONE:
            return self.llm
        return self.vision  # never the Q-Former's: transformers keeps it in full precision


def _precision(text: str) -> Precision:
    try:
        return Precision(text)
    except ValueError as exc:
        raise InvalidArgument(
            f"unknown quantization {text!r}; use none, int8, int4 (nf4, fp4) or e.g. llm=int4,vision=int8"
        ) from exc


def bnb_config(plan: QuantizationPlan, compute_dtype: torch.dtype) -> Any:
    """The transformers `BitsAndBytesConfig` applied while loading, or None."""
    precision = plan.loading_precision()
    if precision is Precision.NONE:
        return None
    _require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    # Everything not at the loading precision is skipped now and handled by `quantize_remaining`.
    skip = [m for p in Precision if p is not precision for m in plan.modules_at(p)]
    skip += ["lm_head", "itm_head", "vision_projection", "text_projection"]  # tiny heads: keep exact
    if precision is Precision.INT8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=plan.int4_type,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def quantize_remaining(model: nn.Module, plan: QuantizationPlan, compute_dtype: torch.dtype) -> None:
    """Quantize, after loading, what transformers did not: components at a precision other than
    the loading one, and the Q-Former, which transformers always keeps in full precision."""
    loaded_at = plan.loading_precision()
    for component, module_names in COMPONENT_MODULES.items():
        precision = getattr(plan, component)
        if precision is Precision.NONE or (precision is loaded_at and component != "qformer"):
            continue
        for module_name in module_names:
            sub = getattr(model, module_name, None)
            if sub is not None:
                _replace_linears(sub, precision, plan.int4_type, compute_dtype)


def _replace_linears(module: nn.Module, precision: Precision, int4_type: str, compute_dtype: torch.dtype) -> None:
    from torch import nn

    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, _quantized_linear(child, precision, int4_type, compute_dtype))
        else:
            _replace_linears(child, precision, int4_type, compute_dtype)


def _quantized_linear(linear: nn.Linear, precision: Precision, int4_type: str, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb
    from torch import nn

    device = linear.weight.device
    has_bias = linear.bias is not None
    weight = linear.weight.data.to("cpu")
    layer: nn.Module
    if precision is Precision.INT8:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=compute_dtype,
            quant_type=int4_type,
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=int4_type)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.to("cpu"), requires_grad=False)
    return layer.to(device)  # moving a bitsandbytes layer to a device is what quantizes it


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QuantizationUnavailable(
            "quantization needs bitsandbytes: pip install bitsandbytes (or load with --quantize none)"
        ) from exc


def count_quantized_linears(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per component, how many linear layers are int8, int4 or full precision (for reports and tests)."""
    counts: dict[str, dict[str, int]] = {}
    for component, names in COMPONENT_MODULES.items():
        tally = {"int8": 0, "int4": 0, "none": 0}
        for module_name in names:
            sub = getattr(model, module_name, None)
            for layer in sub.modules() if sub is not None else ():
                kind = type(layer).__name__
                if kind == "Linear8bitLt":
                    tally["int8"] += 1
                elif kind == "Linear4bit":
                    tally["int4"] += 1
                elif kind == "Linear":
                    tally["none"] += 1
        counts[component] = tally
    return counts
