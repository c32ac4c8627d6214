"""Fine-tuning a BLIP-2 model on its own data, with BLIP-2's own losses.

    lm = load_model("tiny-opt", data_dir=Path("data"))
    result = train(lm, train_records, val_records, TrainConfig(task="caption", max_steps=300),
                   output_dir=Path("data/models/my-captioner"), work_dir=Path("data/work/job-17"))
    load_model("data/models/my-captioner", data_dir=Path("data"))  # a complete HF checkpoint

What trains (as in BLIP-2): the Q-Former with its query tokens and the projections; the vision
encoder and the language model stay frozen unless `train` names them. The losses:

- caption / vqa: the language-modelling loss on the target tokens only. The prompt, the image
  tokens and the padding are labelled -100, so the model learns to write the caption (or the
  answer) after exactly the prompt it will be given when serving.
- match (a retrieval checkpoint): ITC, an in-batch contrastive loss over image-text similarities
  (max over the query tokens), plus ITM, a binary match loss on the positive pairs and on hard
  negatives drawn from the ITC similarities. BLIP-2 also trains an image-grounded text
  generation loss at this stage; transformers' retrieval model has no Q-Former LM head to
  train it with, so it is left out. Optionally (`swap_negatives`), each caption with one word
  swapped for another of its kind ("a red circle" -> "a red square") is one more negative for
  both losses, as NegCLIP (Yuksekgonul et al., 2023) teaches a CLIP model what in-batch
  negatives seldom ask it: which shape, which colour, not only which picture.

The loop is plain: AdamW, linear warm-up then cosine decay, gradient accumulation, gradient
clipping, autocast on CUDA. A vision encoder that stays frozen runs once per training image, not
once per step (`VisionCache`). Every `checkpoint_every` steps the trainable weights, the optimizer
and the random states go to `work_dir/checkpoint/`; a run that finds one there continues from it
and, because the data order is a function of the seed and the epoch only, sees the very batches
the interrupted run would have seen.
"""

import json
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs

from blip2.data.records import CaptionRecord, Task, VqaRecord
from blip2.errors import IncompatibleCheckpoint, InvalidArgument
from blip2.evaluation import evaluate
from blip2.images import load_image_file
from blip2.loading import LoadedModel
from blip2.matching import itc_similarity, itm_logits
from blip2.qformer import EncodedTexts, image_queries, queries_of, text_tokens
from blip2.registry import Family
from blip2.vqa import build_prompt

log = logging.getLogger(__name__)

COMPONENTS = ("vision", "qformer", "llm")
IGNORE_INDEX = -100  # what PyTorch's cross entropy (and transformers' LM losses) skip


@dataclass
class TrainConfig:
    task: str = "caption"  # caption | vqa | match (match needs a retrieval checkpoint)
    max_steps: int = 1000  # optimizer steps; each sees batch_size * grad_accum_steps examples
    batch_size: int = 16  # examples per forward pass; also the ITC negatives each example is contrasted with
    grad_accum_steps: int = 1  # forward passes per optimizer step: a bigger batch in the same memory
    lr: float = 1e-4  # peak learning rate, BLIP-2's (its COCO fine-tuning used 1e-5 on 10^5 images)
    min_lr_ratio: float = 0.1  # the cosine ends at lr * this (BLIP-2: 1e-4 down to 1e-5)
    warmup_steps: int = 100  # linear warm-up from 0: early Adam steps have noisy second moments
    weight_decay: float = 0.05  # BLIP-2's; matrices only, never biases or norms
    beta1: float = 0.9
    beta2: float = 0.999  # LAVIS's AdamW betas
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    train: tuple[str, ...] = ("qformer",)  # components to train, from vision | qformer | llm
    itc_temperature: float = 0.07  # fixed: the HF checkpoint has no slot to save a learned one
    itc_label_smoothing: float = 0.1  # as BLIP-2's ITC
    checkpoint_every: int = 100  # steps between checkpoints in work_dir; 0: only when stopped
    eval_every: int = 0  # steps between validation losses (in progress reports); 0 disables
    eval_batches: int = 4  # batches of val_records each validation loss averages over
    eval_batch_size: int = 16  # batch size of the final metrics on val_records
    seed: int = 1337  # data order, ITM negatives and dropout all follow from it
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | no; autocast on CUDA only, CPU trains in fp32
    vision_cache_mb: int = 2048  # a frozen vision encoder's outputs kept per training image (VisionCache); 0: never
    # match: groups of words that stand for each other (("circle", "square", "star"),): each caption
    # also trains as a negative with one such word swapped for another of its group (`swapped_text`)
    swap_negatives: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        self.train = tuple(self.train)
        self.swap_negatives = tuple(tuple(word.lower() for word in group) for group in self.swap_negatives)
        for problem in _config_problems(self):
            raise InvalidArgument(problem)


def _config_problems(c: TrainConfig) -> list[str]:
    checks = [
        (c.task in {t.value for t in Task}, f"unknown task {c.task!r}; use caption, vqa, caption_vqa or match"),
        (c.max_steps >= 1, "max_steps must be at least 1"),
        (c.batch_size >= 1 and c.grad_accum_steps >= 1, "batch_size and grad_accum_steps must be at least 1"),
        (c.lr > 0 and 0 <= c.min_lr_ratio <= 1, "lr must be positive and min_lr_ratio in [0, 1]"),
        (c.warmup_steps >= 0 and c.checkpoint_every >= 0 and c.eval_every >= 0, "step counts must be >= 0"),
        (bool(c.train) and set(c.train) <= set(COMPONENTS), f"train must name components from {COMPONENTS}"),
        (c.mixed_precision in ("auto", "bf16", "fp16", "no"), "mixed_precision must be auto, bf16, fp16 or no"),
        (c.itc_temperature > 0, "itc_temperature must be positive"),
        (c.vision_cache_mb >= 0, "vision_cache_mb must be >= 0"),
        (all(len(set(g)) >= 2 for g in c.swap_negatives), "each swap_negatives group needs two different words"),
        (not c.swap_negatives or c.task == Task.MATCH, "swap_negatives are negatives for match training only"),
    ]
    return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class TrainProgress:
    step: int  # optimizer steps done
    max_steps: int
    epoch: int  # passes over the training examples started (0 during the first)
    loss: float  # this step's training loss
    lr: float  # the learning rate this step used
    val_loss: float | None  # on the steps where one was computed (eval_every)
    elapsed_s: float  # wall time since this run (or resumed run) started


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimizer steps done in all, across resumes
    stopped: bool  # should_stop() ended it early; the checkpoint in work_dir holds the state
    losses: list[float]  # training loss per step, across resumes
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics (empty when stopped)
    output_dir: Path | None = None  # the saved model, with loss_curve.png and metrics.json (None when stopped)
    resumed_from: int = 0  # the checkpoint's step this run went on from (0: it started afresh)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


@dataclass(frozen=True)
class Example:
    """One training pair: the model reads the image and `prompt`, and learns to write `target`."""

    image_id: str
    image_path: Path
    prompt: str
    target: str


def train(
    lm: LoadedModel,
    train_records: Sequence[CaptionRecord | VqaRecord],
    val_records: Sequence[CaptionRecord | VqaRecord],
    config: TrainConfig,
    *,
    output_dir: Path,
    work_dir: Path,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Fine-tune `lm.model` in place; save it to `output_dir` unless `should_stop()` ends the run first."""
    run = start_run(lm, train_records, val_records, config, work_dir)
    while run.step < config.max_steps:
        if should_stop is not None and should_stop():
            return stop_run(run)
        progress = train_step(run)
        if on_progress is not None:
            on_progress(progress)
    return finish_run(run, val_records, output_dir)


@dataclass
class Run:
    """A training run in progress: what it trains on, what it trains, and how far it has come."""

    lm: LoadedModel
    config: TrainConfig
    examples: list[Example]
    val_examples: list[Example]
    order: "DataOrder"
    params: list[tuple[str, torch.nn.Parameter]]
    optimizer: torch.optim.AdamW
    autocast: AbstractContextManager[Any]
    scaler: torch.amp.GradScaler
    checkpoint_dir: Path
    vision_cache: "VisionCache | None" = None  # the frozen vision encoder's outputs, when they fit
    step: int = 0
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0  # the checkpoint's step this run went on from (0: it started afresh)
    started: float = field(default_factory=time.monotonic)

    def save(self) -> None:
        """Checkpoint the run where it is, for a resumption to go on from."""
        save_checkpoint(self.checkpoint_dir, self.params, self.optimizer, self.scaler, self.config, self.step,
                        self.losses, len(self.examples))  # fmt: skip


def start_run(
    lm: LoadedModel,
    train_records: Sequence[CaptionRecord | VqaRecord],
    val_records: Sequence[CaptionRecord | VqaRecord],
    config: TrainConfig,
    work_dir: Path,
) -> Run:
    """Set a run up: examples, their order, what trains, the optimizer; resumed from `work_dir`'s
    checkpoint when an earlier run of the same job left one (it died, or was stopped)."""
    _check_model(lm, config)
    examples = make_examples(lm, train_records, config.task)
    params = select_trainable(lm, config.train)
    autocast, scaler = _mixed_precision(lm, config, params)
    run = Run(
        lm=lm,
        config=config,
        examples=examples,
        val_examples=make_examples(lm, val_records, config.task) if val_records else [],
        order=DataOrder(len(examples), config.batch_size, config.seed),
        params=params,
        optimizer=make_optimizer(params, config),
        autocast=autocast,
        scaler=scaler,
        checkpoint_dir=work_dir / "checkpoint",
        vision_cache=VisionCache.for_run(lm, config, examples),
    )
    torch.manual_seed(config.seed)
    if _existing(run.checkpoint_dir) is not None:
        run.step, run.losses = load_checkpoint(run.checkpoint_dir, lm, params, run.optimizer, scaler, config,
                                               len(examples))  # fmt: skip
        run.resumed_from = run.step
        log.info("resuming training from the checkpoint at step %d of %d", run.step, config.max_steps)
    set_train_mode(lm, config.train)
    return run


def train_step(run: Run) -> TrainProgress:
    """One optimizer step; a checkpoint on the steps `checkpoint_every` names."""
    config, lm = run.config, run.lm
    lr = lr_at(run.step, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # Gradient accumulation: the micro-batches of one step add their gradients, each loss scaled
    # down so the sum is the mean over the effective batch.
    loss = 0.0
    for micro in range(config.grad_accum_steps):
        batch_index = run.step * config.grad_accum_steps + micro
        batch = [run.examples[i] for i in run.order.batch(batch_index)]
        with run.autocast:
            micro_loss = compute_loss(lm, batch, config, _sampler(config.seed, batch_index), run.vision_cache)
        run.scaler.scale(micro_loss / config.grad_accum_steps).backward()
        loss += micro_loss.item() / config.grad_accum_steps
    if config.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_([p for _, p in run.params], config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.losses.append(loss)
    val_loss = None
    if config.eval_every and run.step % config.eval_every == 0 and run.val_examples:
        val_loss = validation_loss(lm, run.val_examples, config, run.autocast)
    if config.checkpoint_every and run.step % config.checkpoint_every == 0:
        run.save()
    epoch = run.order.epoch_of((run.step - 1) * config.grad_accum_steps)
    return TrainProgress(run.step, config.max_steps, epoch, loss, lr, val_loss, time.monotonic() - run.started)


def stop_run(run: Run) -> TrainResult:
    """Stopped before its last step: checkpoint it, so the job can go on from here."""
    run.save()
    run.lm.model.eval()
    return TrainResult(steps=run.step, stopped=True, losses=run.losses, resumed_from=run.resumed_from)


def finish_run(run: Run, val_records: Sequence[CaptionRecord | VqaRecord], output_dir: Path) -> TrainResult:
    """Every step done: score the model on the validation records and save it, a complete checkpoint."""
    run.lm.model.eval()
    metrics = (
        evaluate(run.lm, val_records, run.config.task, batch_size=run.config.eval_batch_size) if val_records else {}
    )
    save_trained_model(run.lm, output_dir, run.losses, metrics)
    return TrainResult(steps=run.step, stopped=False, losses=run.losses, metrics=metrics, output_dir=output_dir,
                       resumed_from=run.resumed_from)  # fmt: skip


def _check_model(lm: LoadedModel, config: TrainConfig) -> None:
    if (lm.family is Family.ITM) != (config.task == Task.MATCH):
        raise InvalidArgument(
            f"task {config.task!r} cannot train {lm.name!r} ({lm.family.value}): "
            "match trains retrieval models (itm), caption and vqa train the generating ones"
        )
    if lm.quantization.is_quantized:
        raise InvalidArgument("training needs an unquantized model (load it with quantize='none')")


# -- Examples and their order ----------------------------------------------------------------


def make_examples(lm: LoadedModel, records: Sequence[CaptionRecord | VqaRecord], task: str) -> list[Example]:
    """Captions train with the family's short-caption prompt ("" for BLIP-2: unconditional), one
    example per caption; questions with the VQA template and the most common human answer."""
    examples: list[Example] = []
    answers = task in (Task.VQA, Task.CAPTION_VQA)
    captions = task != Task.VQA
    for record in records:
        if isinstance(record, VqaRecord) and answers:
            target = Counter(a.strip() for a in record.answers).most_common(1)[0][0]
            prompt = build_prompt(lm.templates.vqa, record.question)
            examples.append(Example(record.image_id, record.image_path, prompt, target))
        elif isinstance(record, CaptionRecord) and captions:
            prompt = lm.templates.short_caption if task != Task.MATCH else ""
            examples += [Example(record.image_id, record.image_path, prompt, c.strip()) for c in record.captions]
        else:
            raise InvalidArgument(f"{task} training needs {'VqaRecords' if task == Task.VQA else 'CaptionRecords'}")
    if not examples:
        raise InvalidArgument(f"no {task} training examples in the records")
    return examples


class DataOrder:
    """Which examples make up batch k: a fresh permutation per epoch, drawn from (seed, epoch)
    alone, so that a resumed run needs nothing but the batch index to continue the same order."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._permutations: dict[int, list[int]] = {}

    def batch(self, k: int) -> list[int]:
        positions = range(k * self.batch_size, (k + 1) * self.batch_size)  # may run on into the next epoch
        return [self._permutation(p // self.n)[p % self.n] for p in positions]

    def epoch_of(self, k: int) -> int:
        return k * self.batch_size // self.n

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            # Keep this epoch and the one before: a batch can straddle the boundary.
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = torch.randperm(self.n, generator=generator).tolist()
        return self._permutations[epoch]


def _sampler(seed: int, batch_index: int) -> torch.Generator:
    """The random source of ITM's negative sampling for one batch, a function of the batch alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * batch_index + 1)


# -- What trains -----------------------------------------------------------------------------


def component_of(parameter_name: str) -> str:
    """vision | qformer | llm. "qformer" is everything between the two frozen towers: the Q-Former,
    its query tokens and text embeddings, the projections and the ITM head, and the LayerNorm on
    the vision output (`post_layernorm`, BLIP-2's `ln_vision`, which BLIP-2 trains with the Q-Former)."""
    if parameter_name.startswith("vision_model.") and not parameter_name.startswith("vision_model.post_layernorm."):
        return "vision"
    if parameter_name.startswith("language_model."):
        return "llm"
    return "qformer"


def start_from(lm: LoadedModel, source: LoadedModel, components: Sequence[str] = ("vision", "qformer")) -> int:
    """Copy `source`'s weights into `lm` wherever a parameter of `components` has the same name and
    shape; how many were copied. BLIP-2's second stage (generation) starts from the vision encoder,
    query tokens and Q-Former its first stage (ITC + ITM, a retrieval model) trained: those already
    see the image, so the language model learns to read them instead of waiting for them to form."""
    weights = source.model.state_dict()
    copied = 0
    with torch.no_grad():
        for name, parameter in lm.model.named_parameters():
            found = weights.get(name)
            if component_of(name) in components and found is not None and found.shape == parameter.shape:
                parameter.copy_(found.to(parameter.dtype))
                copied += 1
    if not copied:
        raise InvalidArgument(f"{source.name!r} has no {' or '.join(components)} weights {lm.name!r} can start from")
    return copied


def select_trainable(lm: LoadedModel, components: Sequence[str]) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze every parameter outside `components`; the trainable ones, by name."""
    trainable = []
    for name, parameter in lm.model.named_parameters():
        parameter.requires_grad_(component_of(name) in components)
        if parameter.requires_grad:
            trainable.append((name, parameter))
    if not trainable:
        raise InvalidArgument(f"{lm.name!r} has no parameters in {list(components)}")
    return trainable


def set_train_mode(lm: LoadedModel, components: Sequence[str]) -> None:
    """Dropout on where weights learn; a frozen tower stays in eval mode, a fixed function of its
    input (BLIP-2 does the same for its frozen ViT)."""
    lm.model.train()
    for component, attribute in (("vision", "vision_model"), ("llm", "language_model")):
        if component not in components and hasattr(lm.model, attribute):
            getattr(lm.model, attribute).eval()


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices (and the query tokens) only: decaying a bias or a norm's gain pulls it toward
    # zero for no gain in generalisation.
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then a cosine down to `lr * min_lr_ratio` at `max_steps`. A pure
    function of the step: the step is all the scheduler state a checkpoint needs."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - min_lr)


def _mixed_precision(
    lm: LoadedModel, config: TrainConfig, params: list[tuple[str, torch.nn.Parameter]]
) -> tuple[AbstractContextManager[Any], torch.amp.GradScaler]:
    """Autocast on CUDA (bf16 where supported); fp16 also needs loss scaling, bf16 does not."""
    precision = config.mixed_precision
    if precision == "auto":
        precision = "no" if lm.device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "no":
        if lm.dtype != torch.float32:
            raise InvalidArgument("training without mixed precision needs the model loaded in fp32")
        return nullcontext(), torch.amp.GradScaler(enabled=False)
    if lm.device.type != "cuda":
        raise InvalidArgument(f"mixed precision {precision} needs a CUDA device; use mixed_precision='no' on CPU")
    # The weights that learn keep fp32 master copies: a 1e-4 update vanishes against a bf16 weight.
    for _, parameter in params:
        parameter.data = parameter.data.float()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    autocast = torch.autocast(device_type="cuda", dtype=dtype)
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


# -- A frozen vision encoder, run once per image ---------------------------------------------


class VisionCache:
    """A frozen vision encoder's output for each training image, computed the first time the image
    comes up and reused in every epoch after.

    A vision encoder that does not train is a fixed function of its image (it runs in eval mode),
    BLIP-2 freezes its own, and a step spends much of its time there (on the demo models, over half
    of a CPU step with its backward pass). Each image is encoded alone, so its features never depend
    on the batch it first came in and a resumed run computes the very same numbers. Kept on the CPU,
    and only when every training image's features fit in `vision_cache_mb`: a run either caches all
    of them or none.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._features: dict[Path, torch.Tensor] = {}

    @classmethod
    def for_run(cls, lm: LoadedModel, config: TrainConfig, examples: Sequence[Example]) -> "VisionCache | None":
        """A cache when the vision encoder stays frozen, the model reads the image through the
        Q-Former queries alone (not InstructBLIP's, whose Q-Former reads the prompt too) and it fits."""
        if "vision" in config.train or lm.family not in (Family.OPT, Family.T5):
            return None
        vision = lm.model.config.vision_config
        per_image = ((vision.image_size // vision.patch_size) ** 2 + 1) * vision.hidden_size * lm.dtype.itemsize
        images = len({e.image_path for e in examples})
        return cls(lm) if images * per_image <= config.vision_cache_mb * 2**20 else None

    def image_inputs(self, batch: Sequence[Example]) -> BaseModelOutputWithVisionQformerOutputs:
        """What the model's forward computes from `pixel_values`, from the cached vision outputs:
        the Q-Former's queries, projected into the language model's embeddings."""
        vision = torch.stack([self._vision(e.image_path) for e in batch]).to(self.lm.device)
        queries = queries_of(self.lm, vision)
        projected = self.lm.model.language_projection(queries.to(vision.dtype))
        return BaseModelOutputWithVisionQformerOutputs(last_hidden_state=vision, pooler_output=projected)

    def _vision(self, path: Path) -> torch.Tensor:
        if path not in self._features:
            self._features[path] = self._encode(path)
        return self._features[path]

    @torch.no_grad()
    def _encode(self, path: Path) -> torch.Tensor:
        pixels = self.lm.processor.image_processor([load_image_file(path)], return_tensors="pt")["pixel_values"]
        vision = self.lm.model.vision_model(pixel_values=pixels.to(self.lm.device, self.lm.dtype))
        return vision.last_hidden_state[0].cpu()


# -- Losses ----------------------------------------------------------------------------------


def compute_loss(
    lm: LoadedModel,
    batch: list[Example],
    config: TrainConfig,
    sampler: torch.Generator,
    vision_cache: "VisionCache | None" = None,
) -> torch.Tensor:
    if lm.family is Family.ITM:
        return matching_loss(lm, batch, config, sampler)
    return language_modelling_loss(lm, batch, vision_cache)


def language_modelling_loss(
    lm: LoadedModel, batch: list[Example], vision_cache: "VisionCache | None" = None
) -> torch.Tensor:
    """Cross entropy on the target tokens, after the image tokens and the prompt."""
    inputs = encode_lm_batch(lm, batch)
    if vision_cache is None:
        return lm.model(**inputs).loss
    del inputs["pixel_values"]  # the model reads the cached vision outputs instead
    image = vision_cache.image_inputs(batch)
    return lm.model(**inputs, pixel_values=None, mm_encoder_outputs={"image": image}).loss


def encode_lm_batch(lm: LoadedModel, batch: list[Example]) -> dict[str, torch.Tensor]:
    """Model inputs with labels that are -100 everywhere but on the target and its eos.

    The prompt is encoded by the processor exactly as at inference (image tokens, then the
    tokenizer's own special tokens). A decoder-only LM reads image + prompt + target + eos and
    its labels are those ids with all but target + eos masked (transformers shifts them); an
    encoder-decoder LM reads image + prompt in the encoder and has target + eos as labels.
    """
    images = [load_image_file(e.image_path) for e in batch]
    encoded = lm.processor(images=images, text=[e.prompt for e in batch], padding=False)
    prompts, targets = encoded["input_ids"], [_target_ids(lm, e) for e in batch]
    pad = lm.tokenizer.pad_token_id
    inputs: dict[str, torch.Tensor] = {}
    if lm.model.config.use_decoder_only_language_model:
        rows = [p + t for p, t in zip(prompts, targets, strict=True)]
        labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, targets, strict=True)]
        # Left padding, as at generation: the target sits at the end of every row.
        inputs["input_ids"], inputs["attention_mask"] = _pad(rows, pad, left=True)
        inputs["labels"], _ = _pad(labels, IGNORE_INDEX, left=True)
    else:
        inputs["input_ids"], inputs["attention_mask"] = _pad(prompts, pad, left=False)
        inputs["labels"], _ = _pad(targets, IGNORE_INDEX, left=False)
    if "qformer_input_ids" in encoded:  # InstructBLIP: the Q-Former reads the prompt too
        qformer_pad = lm.processor.qformer_tokenizer.pad_token_id
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"] = _pad(
            encoded["qformer_input_ids"], qformer_pad, left=False
        )
    inputs = {k: v.to(lm.device) for k, v in inputs.items()}
    inputs["pixel_values"] = torch.from_numpy(np.stack(encoded["pixel_values"])).to(lm.device, lm.dtype)
    return inputs


def _target_ids(lm: LoadedModel, example: Example) -> list[int]:
    # After a prompt the target is a new word (" a red circle"); unconditionally it starts the text.
    text = f" {example.target}" if example.prompt else example.target
    return [*lm.tokenizer(text, add_special_tokens=False)["input_ids"], lm.tokenizer.eos_token_id]


def _pad(rows: Sequence[Sequence[int]], value: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded to one length with `value`, and the mask of real positions."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def matching_loss(lm: LoadedModel, batch: list[Example], config: TrainConfig, sampler: torch.Generator) -> torch.Tensor:
    """ITC + ITM, as BLIP-2's first stage trains the Q-Former (without its generation loss)."""
    images = image_queries(lm, [load_image_file(e.image_path) for e in batch])
    texts = text_tokens(lm, [e.target for e in batch])
    # Image i vs text j: the best-matching query's cosine, the similarity retrieval ranks by.
    similarity = itc_similarity(lm, images.queries, texts)
    # Several captions of one image (or one caption shared by several images) can share a batch:
    # every such pair is a positive, so the contrastive targets spread over all of them.
    positives = _positive_pairs(batch, lm.device)
    logits = similarity / config.itc_temperature
    itc_t2i = _soft_cross_entropy(logits.t(), positives.t(), config)
    hard = logits.detach()
    swapped = _swapped_negatives(batch, config.swap_negatives, sampler)
    swapped_pairs = None
    if swapped:
        # The swapped captions join the texts each image is contrasted with, and pair with their
        # own image as ITM negatives: the pairs in-batch sampling would almost never draw.
        swapped_texts = text_tokens(lm, [text for _, text in swapped])
        logits = torch.cat([logits, itc_similarity(lm, images.queries, swapped_texts) / config.itc_temperature], 1)
        positives = torch.cat([positives, _same_text(batch, [text for _, text in swapped], lm.device)], 1)
        swapped_pairs = ([i for i, _ in swapped], swapped_texts)
    itc = (_soft_cross_entropy(logits, positives, config) + itc_t2i) / 2
    return itc + _itm_loss(lm, images.vision, texts, hard, positives[:, : len(batch)], sampler, swapped_pairs)


def _positive_pairs(batch: list[Example], device: torch.device) -> torch.Tensor:
    keys = [(e.image_id, e.target.lower()) for e in batch]
    same = [[a[0] == b[0] or a[1] == b[1] for b in keys] for a in keys]
    return torch.tensor(same, dtype=torch.bool, device=device)


def _swapped_negatives(
    batch: list[Example], groups: tuple[tuple[str, ...], ...], sampler: torch.Generator
) -> list[tuple[int, str]]:
    """(example, its caption with one word swapped) for every example whose caption has a word to
    swap and whose swap is not also a caption of its own image."""
    if not groups:
        return []
    own = {(e.image_id, e.target.lower()) for e in batch}
    swapped = []
    for i, example in enumerate(batch):
        text = swapped_text(example.target, groups, sampler)
        if text is not None and (example.image_id, text.lower()) not in own:
            swapped.append((i, text))
    return swapped


def swapped_text(text: str, groups: tuple[tuple[str, ...], ...], sampler: torch.Generator) -> str | None:
    """`text` with one of its words that a group names replaced by another word of that group,
    both drawn from `sampler`; None when no word of `text` is in a group (words lower case)."""
    words = text.split()
    spots = [(i, group) for i, word in enumerate(words) for group in groups if _bare(word) in group]
    if not spots:
        return None
    i, group = spots[_draw(len(spots), sampler)]
    others = [other for other in group if other != _bare(words[i])]
    words[i] = words[i].lower().replace(_bare(words[i]), others[_draw(len(others), sampler)])
    return " ".join(words)


def _bare(word: str) -> str:
    return word.lower().strip(".,;:!?\"'")


def _draw(n: int, sampler: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=sampler))


def _same_text(batch: list[Example], texts: list[str], device: torch.device) -> torch.Tensor:
    """(images, texts): whether each text is also a caption of each image (then it is a positive)."""
    same = [[e.target.lower() == text.lower() for text in texts] for e in batch]
    return torch.tensor(same, dtype=torch.bool, device=device)


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    targets = positives.float() / positives.sum(dim=1, keepdim=True)
    return F.cross_entropy(logits, targets, label_smoothing=config.itc_label_smoothing)


def _itm_loss(
    lm: LoadedModel,
    vision: torch.Tensor,
    texts: EncodedTexts,
    logits: torch.Tensor,
    positives: torch.Tensor,
    sampler: torch.Generator,
    swapped: tuple[list[int], EncodedTexts] | None = None,
) -> torch.Tensor:
    """Binary match loss on every positive pair and, per image and per text, one hard negative:
    drawn with probability softmax(ITC similarity) over the non-positives, so that the pairs
    ITC finds hardest to tell apart are the ones ITM learns from most. `swapped` pairs (images,
    their swapped captions) are negatives too, each weighing as much as any other pair: a pair
    the model cannot yet tell from its swap then sits at 0.5, not below it."""
    batch = torch.arange(len(texts.input_ids))
    negative_texts = _draw_hard(logits, positives, sampler)  # for image i, a text
    negative_images = _draw_hard(logits.t(), positives.t(), sampler)  # for text j, an image
    image_rows = [*batch.tolist(), *[i for i, _ in negative_texts], *[img for _, img in negative_images]]
    text_rows = [*batch.tolist(), *[t for _, t in negative_texts], *[j for j, _ in negative_images]]
    pairs = EncodedTexts(texts.input_ids[text_rows], texts.attention_mask[text_rows], texts.tokens[text_rows])
    logits_of_pairs = itm_logits(lm, vision[image_rows], pairs)
    if swapped is not None:
        swapped_images, swapped_texts = swapped
        logits_of_pairs = torch.cat([logits_of_pairs, itm_logits(lm, vision[swapped_images], swapped_texts)])
    labels = torch.zeros(len(logits_of_pairs), dtype=torch.long, device=logits_of_pairs.device)
    labels[: len(batch)] = 1
    return F.cross_entropy(logits_of_pairs, labels)


def _draw_hard(logits: torch.Tensor, positives: torch.Tensor, sampler: torch.Generator) -> list[tuple[int, int]]:
    """(row, column) pairs: for each row with any negative, one negative column drawn by softmax."""
    weights = logits.float().cpu().masked_fill(positives.cpu(), float("-inf")).softmax(dim=1)
    has_negative = ~positives.cpu().all(dim=1)
    return [(int(r), int(torch.multinomial(weights[r], 1, generator=sampler))) for r in has_negative.nonzero()[:, 0]]


@torch.no_grad()
def validation_loss(
    lm: LoadedModel, examples: list[Example], config: TrainConfig, autocast: AbstractContextManager[Any]
) -> float:
    """The training loss on the first `eval_batches` batches of the validation examples, without dropout."""
    lm.model.eval()
    losses = []
    for k, start in enumerate(range(0, len(examples), config.batch_size)):
        if k >= config.eval_batches:
            break
        with autocast:
            losses.append(compute_loss(lm, examples[start : start + config.batch_size], config, _sampler(0, k)).item())
    set_train_mode(lm, config.train)
    return float(np.mean(losses))


# -- Checkpoints and the trained model -------------------------------------------------------

# Changing any of these between a run and its resumption would change which examples or
# weights the remaining steps see.
_RESUME_KEYS = ("task", "batch_size", "grad_accum_steps", "seed", "train")


def save_checkpoint(
    directory: Path,
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    step: int,
    losses: list[float],
    num_examples: int,
) -> None:
    """Everything a resumed run needs, written to a fresh directory and then swapped in."""
    state = {
        "step": step,
        "losses": losses,
        "num_examples": num_examples,
        "config": {k: v for k, v in asdict(config).items() if k in _RESUME_KEYS},
        "trainable": {name: p.detach().cpu() for name, p in params},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_states(),
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _staging(directory) as staging:
        torch.save(state, staging / "state.pt")


def load_checkpoint(
    directory: Path,
    lm: LoadedModel,
    params: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    num_examples: int,
) -> tuple[int, list[float]]:
    """Restore weights, optimizer and random states in place; the step and the loss history."""
    found = _existing(directory)
    assert found is not None
    state = torch.load(found / "state.pt", map_location="cpu", weights_only=True)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
    current = {k: v for k, v in asdict(config).items() if k in _RESUME_KEYS}
    if saved != current or state["num_examples"] != num_examples:
        raise IncompatibleCheckpoint(
            f"the checkpoint in {found} was written by a different run ({saved}, {state['num_examples']} examples; "
            f"now {current}, {num_examples}); use a fresh work directory"
        )
    with torch.no_grad():
        for name, parameter in params:
            parameter.copy_(state["trainable"][name])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_states(state["rng"])
    return int(state["step"]), list(state["losses"])


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_trained_model(lm: LoadedModel, output_dir: Path, losses: list[float], metrics: dict[str, float]) -> None:
    """A complete Hugging Face checkpoint (weights, config, processor) with `loss_curve.png` and
    `metrics.json`, all appearing at once: half a model is never loadable under the name."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with _staging(output_dir) as staging:
        lm.model.save_pretrained(staging)
        lm.processor.save_pretrained(staging)
        plot_loss_curve(losses, staging / "loss_curve.png")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def move_trained_model(saved: Path, output_dir: Path) -> None:
    """Move a model that `save_trained_model` wrote to `saved` onto `output_dir`, in the same directory,
    replacing whatever is there: a caller that saves each run under a name of its own moves the model
    under its public name only once that name is its to take.

    What it replaces is moved aside first and removed last (`_aside`).
    """
    _swap_in(saved, output_dir, aside=_aside(output_dir))


def plot_loss_curve(losses: list[float], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, safe in a worker thread

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    steps = np.arange(1, len(losses) + 1)
    axes.plot(steps, losses, alpha=0.35, label="loss")
    axes.plot(steps, _smoothed(losses), label="moving average")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def _smoothed(values: list[float], beta: float = 0.9) -> list[float]:
    out, average = [], 0.0
    for i, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** (i + 1)))  # bias-corrected, so the curve starts at the first loss
    return out


class _staging(AbstractContextManager[Path]):
    """A private directory next to `target`, renamed onto it when the block succeeds.

    The old `target` is moved aside first and removed last; if the process dies between the
    two renames, `_existing` finds the moved-aside copy, so the last good state is never lost.
    """

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.path

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        _swap_in(self.path, self.target, aside=_aside(self.target))


def _swap_in(source: Path, target: Path, *, aside: Path) -> None:
    """Rename `source` onto `target`, the old `target` (if any) renamed to `aside` first and removed last."""
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        target.rename(aside)
    source.rename(target)
    shutil.rmtree(aside, ignore_errors=True)


def _aside(target: Path) -> Path:
    """Where `target` waits while its replacement is renamed onto it: `.NAME.old`, hidden, because
    `NAME.old` may be a model of its own (no model's name starts with ".")."""
    return target.with_name(f".{target.name}.old")


def _existing(directory: Path) -> Path | None:
    """The checkpoint directory, or the copy moved aside by a swap that did not finish (as `NAME.old`
    by versions before 2026-12-01)."""
    for candidate in (directory, _aside(directory), directory.with_name(f"{directory.name}.old")):
        if (candidate / "state.pt").is_file():
            return candidate
    return None
