"""The service's request and response models, as the client uses them (the same classes the API validates with).

job_request("vqa", VqaInput(image_id=image.id, question="what colour is it?"), model="shapes-blip2")
"""

from jobs.inputs import (
    CaptionInput,
    DecodingInput,
    DownloadInput,
    EmbedInput,
    EvaluateInput,
    InstructInput,
    JobInput,
    MatchInput,
    TrainInput,
    VqaInput,
)
from jobs.kinds import JobKind
from jobs.outputs import CaptionOutput, EmbedOutput, InstructOutput, JobOutput, MatchOutput, VqaOutput
from jobs.schemas import (
    JOB_CREATE_MODELS,
    ImagePublic,
    JobCreateBase,
    JobPublicBase,
    JobsBatchItemResult,
    JobsBatchPublic,
    JobsPublic,
    WebhookPublic,
)
from jobs.status import JobStatus

__all__ = [
    "CaptionInput", "CaptionOutput", "DecodingInput", "DownloadInput", "EmbedInput", "EmbedOutput", "EvaluateInput",
    "ImagePublic", "InstructInput", "InstructOutput", "JobCreateBase", "JobInput", "JobKind", "JobOutput",
    "JobPublicBase", "JobStatus", "JobsBatchItemResult", "JobsBatchPublic", "JobsPublic", "MatchInput", "MatchOutput",
    "TrainInput", "VqaInput", "VqaOutput", "WebhookPublic", "job_request",
]  # fmt: skip


def job_request(
    kind: JobKind | str, job_input: JobInput, model: str | None = None, webhook_url: str | None = None
) -> JobCreateBase:
    """A job request of `kind`, validated as the API validates it (so a mistake fails here, not there)."""
    job_kind = JobKind(kind)
    return JOB_CREATE_MODELS[job_kind](kind=job_kind, model=model, input=job_input, webhook_url=webhook_url)
