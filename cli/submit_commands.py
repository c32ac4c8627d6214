"""`blip2-jobs submit <kind> IMAGES...`: jobs for image files on a running service, through the Python client.

    blip2-jobs submit caption photos/*.jpg --server http://127.0.0.1:8000 --key b2j_... --wait
    blip2-jobs submit vqa photos/*.jpg --question "what colour is the car?" --wait > answers.jsonl

Every image is uploaded once (the client asks the server for its SHA-256 first), its job submitted
through the batch endpoint, and, with --wait, long-polled to its end. stdout gets one JSON line per
image (`image`, `job_id`, `status`, `result`, `error`); stderr a progress bar.

Run it again after Ctrl-C (or a lost connection) and it picks up where it stopped: each job's
Idempotency-Key is the SHA-256 of the file's bytes and of the request, so the server answers a
rerun with the jobs it already has instead of making new ones.

Exit status: 0 when every job succeeded (or, without --wait, was accepted); 1 when any failed, was
canceled or refused, or an image was not accepted; 2 for a bad option, an unreachable server or a
refused key (one line on stderr); 130 when interrupted.
"""

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.progress import Progress

    from blip2_jobs import BatchJob, Client
    from blip2_jobs.models import JobCreateBase, JobPublicBase, JobsBatchItemResult

submit = typer.Typer(help="Submit jobs for image files to a running blip2-jobs service.", no_args_is_help=True)

_KEY_VERSION = b"blip2-jobs submit v1"
_PER_IMAGE_STATUSES = frozenset({413, 415, 422})  # about the file itself: reported on its line, the rest go on

Images = Annotated[list[Path], typer.Argument(help="Image files, one job each.", show_default=False)]
Server = Annotated[str, typer.Option(envvar="BLIP2_JOBS_SERVER", help="The API's base URL.")]
Key = Annotated[str, typer.Option(envvar="BLIP2_JOBS_KEY", help="An API key (`blip2-jobs keys create`).")]
Model = Annotated[str | None, typer.Option(help="The model (default: the server's).")]
Wait = Annotated[bool, typer.Option(help="Wait for each job to finish and print its result.")]
MaxNewTokens = Annotated[int | None, typer.Option(help="Decoding: most new tokens.")]
NumBeams = Annotated[int | None, typer.Option(help="Decoding: beams.")]


def register(app: typer.Typer) -> None:
    app.add_typer(submit, name="submit")


@dataclass(frozen=True)
class Target:
    """Where jobs go and how: the server, the key, the model, whether to wait."""

    server: str
    key: str
    model: str | None
    wait: bool


@dataclass(frozen=True)
class Line:
    """What stdout says about one image."""

    image: Path
    job_id: str | None = None
    status: str = "refused"
    result: Any = None
    error: dict[str, Any] | None = None

    def json(self) -> str:
        fields = {"image": str(self.image), "job_id": self.job_id, "status": self.status}
        return json.dumps(fields | {"result": self.result, "error": self.error})

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "queued", "running")


@submit.command()
def caption(
    images: Images,
    server: Server = "http://127.0.0.1:8000",
    key: Key = "",
    model: Model = None,
    wait: Wait = False,
    prompt: Annotated[str | None, typer.Option(help="Text the caption starts with.")] = None,
    style: Annotated[str, typer.Option(help="short or detailed.")] = "short",
    max_new_tokens: MaxNewTokens = None,
    num_beams: NumBeams = None,
) -> None:
    """Caption each image."""
    fields = {"prompt": prompt, "style": style, "max_new_tokens": max_new_tokens, "num_beams": num_beams}
    _run(Target(server, key, model, wait), images, "caption", fields)


@submit.command()
def vqa(
    images: Images,
    question: Annotated[str, typer.Option(help="The question asked of every image.")],
    server: Server = "http://127.0.0.1:8000",
    key: Key = "",
    model: Model = None,
    wait: Wait = False,
    max_new_tokens: MaxNewTokens = None,
    num_beams: NumBeams = None,
) -> None:
    """Answer a question about each image."""
    fields = {"question": question, "max_new_tokens": max_new_tokens, "num_beams": num_beams}
    _run(Target(server, key, model, wait), images, "vqa", fields)


@submit.command()
def instruct(
    images: Images,
    instruction: Annotated[str, typer.Option(help="The instruction followed for every image.")],
    server: Server = "http://127.0.0.1:8000",
    key: Key = "",
    model: Model = None,
    wait: Wait = False,
    max_new_tokens: MaxNewTokens = None,
) -> None:
    """Follow an instruction about each image (an InstructBLIP model)."""
    fields = {"instruction": instruction, "max_new_tokens": max_new_tokens}
    _run(Target(server, key, model, wait), images, "instruct", fields)


@submit.command()
def embed(
    images: Images,
    server: Server = "http://127.0.0.1:8000",
    key: Key = "",
    model: Model = None,
    wait: Wait = False,
    mode: Annotated[str, typer.Option(help="image, or multimodal (with --text).")] = "image",
    text: Annotated[str | None, typer.Option(help="The text of a multimodal embedding.")] = None,
) -> None:
    """Embed each image (alone, or with --text)."""
    _run(Target(server, key, model, wait), images, "embed", {"mode": mode, "text": text})


# ---- the run --------------------------------------------------------------------------------


def _run(target: Target, paths: list[Path], kind: str, fields: dict[str, Any]) -> None:
    options = {name: value for name, value in fields.items() if value is not None}
    if not target.key:
        _fail("give an API key: --key, or BLIP2_JOBS_KEY in the environment")
    with _one_line_errors(target):
        _check_options(kind, options, target.model)
        lines = _submit_all(target, paths, kind, options)
    raise typer.Exit(0 if all(line.ok for line in lines) else 1)


def _submit_all(target: Target, paths: list[Path], kind: str, options: dict[str, Any]) -> list["Line"]:
    from blip2_jobs import Client

    with Client(target.server, target.key) as client:
        client.list_jobs(limit=1)  # an unreachable server or a refused key fails here, before the progress bar
        return _submit_with_progress(client, target, paths, kind, options)


def _submit_with_progress(
    client: "Client", target: Target, paths: list[Path], kind: str, options: dict[str, Any]
) -> list[Line]:
    from blip2_jobs import BatchJob

    lines: list[Line] = []
    with _progress(len(paths)) as progress:
        task = progress.add_task("uploading", total=len(paths))
        prepared = [(path, _prepare(client, path, kind, options, target.model)) for path in paths]
        progress.update(task, description="submitting")
        outcomes = iter(client.submit_many([job for _, job in prepared if isinstance(job, BatchJob)]).items)
        progress.update(task, description="waiting" if target.wait else "submitted")
        for path, job in prepared:
            line = job if isinstance(job, Line) else _line_of(client, path, next(outcomes), target.wait)
            _emit(line, lines)
            progress.advance(task)
    return lines


def _prepare(client: "Client", path: Path, kind: str, options: dict[str, Any], model: str | None) -> "BatchJob | Line":
    """The image's job with its Idempotency-Key, or the Line saying why the file was not accepted."""
    from blip2_jobs import ApiError, BatchJob

    try:
        data = path.read_bytes()
        image = client.upload_image(data)
    except OSError as exc:
        return Line(path, error={"code": "unreadable_file", "message": exc.strerror or str(exc)})
    except ApiError as exc:
        if exc.status not in _PER_IMAGE_STATUSES:
            raise
        return Line(path, error={"code": exc.code, "message": exc.message})
    request = _request(kind, options | {"image_id": image.id}, model)
    return BatchJob(request, idempotency_key=_idempotency_key(data, kind, options, model))


def _line_of(client: "Client", path: Path, outcome: "JobsBatchItemResult", wait: bool) -> Line:
    if outcome.job is None:
        return Line(path, error=None if outcome.error is None else outcome.error.model_dump())
    job = client.wait(outcome.job.id) if wait else outcome.job
    return _job_line(path, job)


def _job_line(path: Path, job: "JobPublicBase") -> Line:
    result = None if job.result is None else job.result.model_dump(mode="json")
    error = None if job.error is None else job.error.model_dump()
    return Line(path, str(job.id), job.status.value, result, error)


def _emit(line: Line, lines: list[Line]) -> None:
    typer.echo(line.json())
    sys.stdout.flush()  # a line per image as it is known, for whoever reads the pipe
    lines.append(line)


def _request(kind: str, job_input: dict[str, Any], model: str | None) -> "JobCreateBase":
    from blip2_jobs.models import JobKind, job_request
    from jobs.kinds import spec_of

    return job_request(JobKind(kind), spec_of(kind).parse(job_input), model=model)


def _check_options(kind: str, options: dict[str, Any], model: str | None) -> None:
    """Fail on a bad option before any file is uploaded (a placeholder image id stands in)."""
    from uuid import UUID

    _request(kind, options | {"image_id": UUID(int=0)}, model)


def _idempotency_key(data: bytes, kind: str, options: dict[str, Any], model: str | None) -> str:
    """The same file with the same request, the same key: a rerun finds its jobs instead of making more."""
    request = json.dumps({"kind": kind, "model": model, "input": options}, sort_keys=True).encode()
    digest = hashlib.sha256(_KEY_VERSION)
    for part in (hashlib.sha256(data).digest(), hashlib.sha256(request).digest()):
        digest.update(part)
    return digest.hexdigest()


@contextmanager
def _progress(total: int) -> Iterator["Progress"]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield progress


@contextmanager
def _one_line_errors(target: Target) -> Iterator[None]:
    """A bad option, an unreachable server or a refused key: `error: ...` on stderr and exit 2; Ctrl-C: 130."""
    import httpx
    from pydantic import ValidationError

    from blip2_jobs import ApiError

    try:
        yield
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()))
    except ApiError as exc:
        _fail(f"{target.server}: {exc.status} {exc}")
    except httpx.HTTPError as exc:
        _fail(f"{target.server}: {exc or type(exc).__name__}")
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to pick up where it stopped", err=True)
        raise typer.Exit(130) from None


def _fail(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(2)
