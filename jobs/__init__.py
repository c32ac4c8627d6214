"""The job system's shared core: settings, the job and image tables, schemas, state transitions, the broker.

Both `api/` and `worker/` import this package; it imports neither of them, and never torch.
"""
