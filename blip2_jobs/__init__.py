"""A Python client for blip2-jobs, sync and async, typed by the service's own pydantic models.

    from blip2_jobs import Client, job_request
    from blip2_jobs.models import CaptionInput

    with Client("http://127.0.0.1:8000", api_key="b2j_...") as client:
        image = client.upload_image(Path("cat.jpg").read_bytes())     # once per SHA-256
        job = client.submit(job_request("caption", CaptionInput(image_id=image.id)))
        done = client.wait(job.id)                                    # long-polls
        print(done.result)

Importing it imports neither torch nor the database layer.
"""

from blip2_jobs._protocol import BatchJob
from blip2_jobs.async_client import AsyncClient
from blip2_jobs.client import Client
from blip2_jobs.errors import ApiError, ClientError, WaitTimedOut
from blip2_jobs.models import job_request

__all__ = ["ApiError", "AsyncClient", "BatchJob", "Client", "ClientError", "WaitTimedOut", "job_request"]
