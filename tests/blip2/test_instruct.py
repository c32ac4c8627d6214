"""Instructions: InstructBLIP feeds them to the Q-Former as well as to the language model."""

import pytest
import torch
from PIL import Image

from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument
from blip2.instruct import instruct
from blip2.loading import LoadedModel

GREEDY = DecodingOptions(max_new_tokens=6, min_new_tokens=3, num_beams=1)


def test_instructions_are_followed_per_image(instruct_model: LoadedModel, photos: dict[str, Image.Image]) -> None:
    images = [photos["astronaut"], photos["coffee"]]
    instructions = ["Describe the image in detail.", "What is in the image?"]
    results = instruct(instruct_model, images, instructions, decoding=GREEDY)
    assert [bool(r.text) for r in results] == [True, True]
    alone = [instruct(instruct_model, [i], [t], decoding=GREEDY)[0] for i, t in zip(images, instructions, strict=True)]
    assert results == alone


def test_the_instruction_reaches_the_q_former(instruct_model: LoadedModel, photos: dict[str, Image.Image]) -> None:
    def query_outputs(instruction: str) -> torch.Tensor:
        inputs = instruct_model.processor(images=[photos["chelsea"]], text=[instruction], return_tensors="pt")
        with torch.no_grad():
            features = instruct_model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                qformer_input_ids=inputs["qformer_input_ids"],
                qformer_attention_mask=inputs["qformer_attention_mask"],
                return_dict=True,
            )
        return features.pooler_output

    assert not torch.allclose(query_outputs("What is in the image?"), query_outputs("How many cats are there?"))


def test_plain_blip2_takes_instructions_as_prompts(opt: LoadedModel, photos: dict[str, Image.Image]) -> None:
    assert instruct(opt, [photos["coffee"]], ["Describe the image."], decoding=GREEDY)[0].text


def test_empty_instructions_are_refused(instruct_model: LoadedModel, photos: dict[str, Image.Image]) -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        instruct(instruct_model, [photos["coffee"]], [" "])
