"""The HTTP API: FastAPI routes over the shared `jobs` package. Never imports torch or the worker."""
