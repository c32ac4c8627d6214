"""The Celery worker: a child process holds a BLIP-2 model and runs jobs from its model's queue.

Glue only: a task loads a job from Postgres, calls `blip2`, and writes the result back.
"""
