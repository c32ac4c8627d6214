"""Fine-tuning tiny checkpoints: the losses fall, frozen parts stay put, runs resume exactly, the result loads."""

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from blip2 import training
from blip2.caption import caption
from blip2.data.records import CaptionRecord, VqaRecord
from blip2.decoding import DecodingOptions
from blip2.errors import IncompatibleCheckpoint, InvalidArgument
from blip2.loading import LoadedModel, load_model
from blip2.qformer import EncodedTexts
from blip2.training import (
    DataOrder,
    Example,
    TrainConfig,
    TrainProgress,
    TrainResult,
    VisionCache,
    component_of,
    encode_lm_batch,
    language_modelling_loss,
    lr_at,
    make_examples,
    matching_loss,
    start_from,
    swapped_text,
    train,
)

SHAPES = [("red", "circle"), ("blue", "square"), ("green", "circle"), ("yellow", "square")]


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> list[CaptionRecord]:
    """Four drawn images, each with the caption that says what it shows."""
    root = tmp_path_factory.mktemp("shapes")
    records = []
    for i, (colour, shape) in enumerate(SHAPES):
        image = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((12, 12, 52, 52), fill=colour)
        path = root / f"{i}.png"
        image.save(path)
        records.append(CaptionRecord(image_id=str(i), image_path=path, captions=[f"a {colour} {shape}"]))
    return records


@pytest.fixture(scope="module")
def questions(captions: list[CaptionRecord]) -> list[VqaRecord]:
    return [
        VqaRecord(f"q{r.image_id}", r.image_id, r.image_path, "what colour is the shape?", [colour] * 10)
        for r, (colour, _) in zip(captions, SHAPES, strict=True)
    ]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """CPU kernels reduce in a thread-dependent order; with one thread a run repeats bit for bit.
    (With several, attention key biases, whose true gradient is zero, follow rounding noise.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh(name: str, data_dir: Path) -> LoadedModel:
    """A newly loaded model: training changes the weights in place, so no test shares one."""
    return load_model(name, data_dir=data_dir)


def run(
    lm: LoadedModel,
    records: Sequence[CaptionRecord] | Sequence[VqaRecord],
    tmp_path: Path,
    on_progress: Callable[[TrainProgress], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train on `records` alone (no validation metrics), small batches, no checkpoints unless asked."""
    settings: dict[str, Any] = dict(batch_size=4, warmup_steps=3, checkpoint_every=0, lr=3e-3)
    config = TrainConfig(**{**settings, **overrides})
    return train(
        lm, records, [], config, output_dir=tmp_path / "out", work_dir=tmp_path / "work", on_progress=on_progress
    )


def _fell(losses: list[float]) -> float:
    """Mean loss over the last five steps as a fraction of the first five."""
    return (sum(losses[-5:]) / 5) / (sum(losses[:5]) / 5)


@pytest.mark.parametrize(("name", "lr"), [("tiny-opt", 3e-3), ("tiny-t5", 1e-2)])
def test_caption_loss_goes_down(
    tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path, name: str, lr: float
) -> None:
    result = run(fresh(name, tiny_data_dir), captions, tmp_path, task="caption", max_steps=40, lr=lr)
    assert len(result.losses) == 40 and result.final_loss == result.losses[-1]
    assert _fell(result.losses) < 0.75, result.losses


def test_vqa_loss_goes_down(tiny_data_dir: Path, questions: list[VqaRecord], tmp_path: Path) -> None:
    result = run(fresh("tiny-opt", tiny_data_dir), questions, tmp_path, task="vqa", max_steps=30)
    assert _fell(result.losses) < 0.7, result.losses


def test_match_loss_goes_down(tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path) -> None:
    result = run(fresh("tiny-itm", tiny_data_dir), captions, tmp_path, task="match", max_steps=30)
    assert _fell(result.losses) < 0.75, result.losses


def test_a_swapped_text_changes_one_word_for_another_of_its_group() -> None:
    groups = (("circle", "square", "star"), ("red", "blue"))
    draws = [swapped_text("A Red circle on the left.", groups, torch.Generator().manual_seed(n)) for n in range(40)]
    changed = set()
    for text in draws:
        assert text is not None
        before, after = ["a", "red", "circle", "on", "the", "left."], text.lower().split()
        (spot,) = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        group = next(g for g in groups if before[spot] in g)
        assert after[spot] in group, text
        changed.add(spot)
    assert changed == {1, 2}  # either kind of word
    assert swapped_text("a red circle", groups, torch.Generator().manual_seed(3)) == swapped_text(
        "a red circle", groups, torch.Generator().manual_seed(3)
    )
    assert swapped_text("a dog on the left", groups, torch.Generator()) is None


def test_swapped_captions_are_itm_negatives_of_their_own_image(
    tiny_data_dir: Path, captions: list[CaptionRecord], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lm = fresh("tiny-itm", tiny_data_dir)
    pairs: list[list[str]] = []
    real = training.itm_logits

    def recording(lm: LoadedModel, vision: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
        pairs.append(lm.tokenizer.batch_decode(texts.input_ids, skip_special_tokens=True))
        return real(lm, vision, texts)

    monkeypatch.setattr(training, "itm_logits", recording)
    config = TrainConfig(task="match", swap_negatives=(("circle", "square"),))
    loss = matching_loss(lm, make_examples(lm, captions, "match"), config, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    # After the in-batch pairs, one more ITM pass: each image with its own caption, shape swapped.
    assert len(pairs) == 2 and pairs[1] == ["a red square", "a blue circle", "a green square", "a yellow circle"]
    swapping = {"task": "match", "max_steps": 30, "swap_negatives": (("circle", "square"),)}
    result = run(fresh("tiny-itm", tiny_data_dir), captions, tmp_path, **swapping)
    assert _fell(result.losses) < 0.75, result.losses


def test_instruct_trains_with_its_qformer_prompt(
    tiny_data_dir: Path, questions: list[VqaRecord], tmp_path: Path
) -> None:
    result = run(fresh("tiny-instruct", tiny_data_dir), questions, tmp_path, task="vqa", max_steps=4)
    assert result.steps == 4 and all(loss > 0 for loss in result.losses)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-itm"])
def test_frozen_components_stay_bit_identical(
    tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path, name: str
) -> None:
    lm = fresh(name, tiny_data_dir)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    run(lm, captions, tmp_path, task="match" if name == "tiny-itm" else "caption", max_steps=3)
    after = dict(lm.model.named_parameters())
    frozen = [n for n in before if component_of(n) != "qformer"]
    trained = [n for n in before if component_of(n) == "qformer"]
    assert frozen and trained
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in trained)
    assert "vision_model.post_layernorm.weight" in trained  # BLIP-2's ln_vision trains with the Q-Former


def test_labels_are_the_target_and_eos_only(tiny_data_dir: Path, captions: list[CaptionRecord]) -> None:
    opt, t5 = fresh("tiny-opt", tiny_data_dir), fresh("tiny-t5", tiny_data_dir)
    batch = [
        Example("0", captions[0].image_path, "", "a red circle"),
        Example("1", captions[1].image_path, "Question: what? Answer:", "blue"),
    ]
    for lm in (opt, t5):
        inputs = encode_lm_batch(lm, batch)
        targets = [lm.tokenizer.decode(row[row != -100]) for row in inputs["labels"]]
        assert targets == ["a red circle</s>", " blue</s>"] if lm is opt else ["a red circle</s>", "blue</s>"]
    # Decoder-only: the labelled tokens are the last of each row, and the loss is the mean
    # cross entropy of predicting each of them from the position before.
    inputs = encode_lm_batch(opt, batch)
    labels = inputs["labels"]
    assert torch.equal(inputs["input_ids"][labels != -100], labels[labels != -100])
    with torch.no_grad():
        loss = opt.model(**inputs).loss
        logits = opt.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1][labels[:, 1:] != -100], labels[:, 1:][labels[:, 1:] != -100]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_vqa_examples_use_the_template_and_the_most_common_answer(
    tiny_data_dir: Path, questions: list[VqaRecord]
) -> None:
    lm = fresh("tiny-opt", tiny_data_dir)
    record = VqaRecord("q", "0", questions[0].image_path, "what colour?", ["red", "blue", "blue", "red", "blue"])
    (example,) = make_examples(lm, [record], "vqa")
    assert (example.prompt, example.target) == ("Question: what colour? Answer:", "blue")
    with pytest.raises(InvalidArgument):
        make_examples(lm, [record], "caption")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("name", "task"), [("tiny-opt", "caption"), ("tiny-itm", "match")])
def test_resume_after_stop_matches_an_uninterrupted_run(
    tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path, name: str, task: str
) -> None:
    # 3 examples per batch over 4 images: batches straddle epochs, and dropout and ITM negatives draw randomness.
    config = TrainConfig(task=task, max_steps=10, batch_size=3, lr=3e-3, warmup_steps=2, checkpoint_every=3)
    straight = fresh(name, tiny_data_dir)
    whole = train(straight, captions, [], config, output_dir=tmp_path / "a", work_dir=tmp_path / "work-a")

    progress: list[TrainProgress] = []
    first = fresh(name, tiny_data_dir)
    stopped = train(
        first, captions, [], config, output_dir=tmp_path / "b", work_dir=tmp_path / "work-b",
        on_progress=progress.append, should_stop=lambda: len(progress) == 5,
    )  # fmt: skip
    assert stopped.stopped and stopped.steps == 5 and not (tmp_path / "b").exists()
    assert (tmp_path / "work-b" / "checkpoint" / "state.pt").is_file()

    resumed = fresh(name, tiny_data_dir)  # as a new worker process would: base weights, then the checkpoint
    rest = train(resumed, captions, [], config, output_dir=tmp_path / "b", work_dir=tmp_path / "work-b")
    assert not rest.stopped and rest.steps == 10
    assert rest.losses == whole.losses
    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_resume_refuses_a_checkpoint_from_another_run(
    tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path
) -> None:
    run(fresh("tiny-opt", tiny_data_dir), captions, tmp_path, max_steps=2, checkpoint_every=1)
    with pytest.raises(IncompatibleCheckpoint):
        run(fresh("tiny-opt", tiny_data_dir), captions, tmp_path, max_steps=4, seed=7)


def test_a_half_finished_checkpoint_swap_keeps_the_last_good_one(
    tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path
) -> None:
    run(fresh("tiny-opt", tiny_data_dir), captions, tmp_path, max_steps=2, checkpoint_every=2)
    checkpoint = tmp_path / "work" / "checkpoint"
    checkpoint.rename(checkpoint.with_name("checkpoint.old"))  # died between the two renames of a swap
    progress: list[TrainProgress] = []
    run(fresh("tiny-opt", tiny_data_dir), captions, tmp_path, max_steps=3, on_progress=progress.append)
    assert [p.step for p in progress] == [3]


def test_progress_is_reported_every_step(tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path) -> None:
    progress: list[TrainProgress] = []
    lm = fresh("tiny-opt", tiny_data_dir)
    config = TrainConfig(
        max_steps=4, batch_size=2, grad_accum_steps=2, warmup_steps=2, eval_every=2, checkpoint_every=0
    )
    train(lm, captions, [], config, output_dir=tmp_path / "o", work_dir=tmp_path / "w", on_progress=progress.append)
    assert [p.step for p in progress] == [1, 2, 3, 4]
    assert [p.epoch for p in progress] == [0, 1, 2, 3]  # 4 examples per step, 4 examples per epoch
    assert [p.val_loss is not None for p in progress] == [False, False, False, False]  # no val records given
    assert progress[0].lr == pytest.approx(config.lr / 2) and progress[1].lr == pytest.approx(config.lr)


def test_saved_model_loads_captions_and_has_its_report(
    tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path
) -> None:
    progress: list[TrainProgress] = []
    config = TrainConfig(max_steps=4, batch_size=4, warmup_steps=1, eval_every=2, checkpoint_every=0)
    result = train(
        fresh("tiny-opt", tiny_data_dir), captions, captions, config,
        output_dir=tmp_path / "model", work_dir=tmp_path / "work", on_progress=progress.append,
    )  # fmt: skip
    assert result.output_dir == tmp_path / "model"
    assert set(result.metrics) == {"bleu_4", "cider", "exact_match"}
    assert json.loads((tmp_path / "model" / "metrics.json").read_text()) == result.metrics
    assert (tmp_path / "model" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert progress[1].val_loss is not None and progress[0].val_loss is None

    trained = load_model(str(tmp_path / "model"), data_dir=tiny_data_dir)
    image = Image.open(captions[0].image_path).convert("RGB")
    (result_caption,) = caption(trained, [image], decoding=DecodingOptions(num_beams=1, max_new_tokens=5))
    assert result_caption.captions[0]


def test_config_is_validated(tiny_data_dir: Path, captions: list[CaptionRecord], tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        TrainConfig(train=("wings",))
    with pytest.raises(InvalidArgument):
        TrainConfig(task="dance")
    with pytest.raises(InvalidArgument, match="match training only"):
        TrainConfig(task="caption", swap_negatives=(("circle", "square"),))
    with pytest.raises(InvalidArgument, match="two different words"):
        TrainConfig(task="match", swap_negatives=(("circle", "Circle"),))
    with pytest.raises(InvalidArgument):  # a captioning model cannot train retrieval
        run(fresh("tiny-opt", tiny_data_dir), captions, tmp_path, task="match", max_steps=1)


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    config = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(60, config) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, config) == pytest.approx(1e-4)
    assert all(lr_at(s, config) >= lr_at(s + 1, config) for s in range(10, 110))


def test_data_order_is_a_permutation_per_epoch_and_depends_only_on_the_seed() -> None:
    order = DataOrder(n=5, batch_size=2, seed=3)
    first_epochs = [i for k in range(5) for i in order.batch(k)]  # 10 positions: two epochs
    assert sorted(first_epochs[:5]) == sorted(first_epochs[5:]) == list(range(5))
    assert first_epochs[:5] != first_epochs[5:]
    assert DataOrder(n=5, batch_size=2, seed=3).batch(3) == order.batch(3)
    assert DataOrder(n=5, batch_size=2, seed=4).batch(0) != order.batch(0) or DataOrder(5, 2, 4).batch(
        1
    ) != order.batch(1)


def test_a_generating_model_starts_from_a_retrieval_model_s_vision_and_q_former(tiny_data_dir: Path) -> None:
    """BLIP-2's second stage: the vision encoder, query tokens and Q-Former come from the first."""
    captioner, matcher = fresh("tiny-opt", tiny_data_dir), fresh("tiny-itm", tiny_data_dir)
    with torch.no_grad():
        for parameter in matcher.model.parameters():
            parameter.add_(1.0)  # as if trained: no longer what the captioner was built with
    language_model = captioner.model.language_model.state_dict()
    assert start_from(captioner, matcher) > 0
    ours, theirs = captioner.model.state_dict(), matcher.model.state_dict()
    for name in ("vision_model.embeddings.patch_embedding.weight", "query_tokens", "qformer.layernorm.weight"):
        assert torch.equal(ours[name], theirs[name]), name
    assert all(torch.equal(v, captioner.model.language_model.state_dict()[k]) for k, v in language_model.items())


def test_starting_from_a_model_with_nothing_in_common_is_refused(tiny_data_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="no llm weights"):
        start_from(fresh("tiny-opt", tiny_data_dir), fresh("tiny-itm", tiny_data_dir), components=("llm",))


def test_a_frozen_vision_encoder_runs_once_per_image_and_gives_the_same_loss(
    tiny_data_dir: Path, captions: list[CaptionRecord]
) -> None:
    """The cached vision outputs stand in for the encoder exactly: same loss, same gradients."""
    lm = fresh("tiny-opt", tiny_data_dir)
    examples = make_examples(lm, captions, "caption")
    cache = VisionCache.for_run(lm, TrainConfig(train=("qformer", "llm")), examples)
    assert cache is not None
    calls = []
    lm.model.vision_model.register_forward_hook(lambda *_: calls.append(1))
    direct = language_modelling_loss(lm, examples)
    assert len(calls) == 1  # one batch, one pass
    direct.backward()
    direct_grads = {n: p.grad.clone() for n, p in lm.model.qformer.named_parameters() if p.grad is not None}
    lm.model.zero_grad()
    cached = language_modelling_loss(lm, examples, cache)
    cached.backward()
    language_modelling_loss(lm, examples, cache)
    assert len(calls) == 1 + len(examples)  # each image encoded alone, once
    assert torch.allclose(direct, cached, atol=1e-5), (direct, cached)
    for name, parameter in lm.model.qformer.named_parameters():
        if name in direct_grads:
            assert torch.allclose(direct_grads[name], parameter.grad, atol=1e-5), name


def test_the_vision_cache_is_for_frozen_encoders_that_fit(tiny_data_dir: Path, captions: list[CaptionRecord]) -> None:
    lm = fresh("tiny-opt", tiny_data_dir)
    examples = make_examples(lm, captions, "caption")
    assert VisionCache.for_run(lm, TrainConfig(train=("vision", "qformer")), examples) is None  # it trains
    assert VisionCache.for_run(lm, TrainConfig(vision_cache_mb=0), examples) is None  # no room
    assert VisionCache.for_run(fresh("tiny-instruct", tiny_data_dir), TrainConfig(), examples) is None
