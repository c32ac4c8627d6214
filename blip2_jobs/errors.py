"""What the clients raise: the API's own errors, typed, and a wait that ran out."""


class ClientError(Exception):
    """Base class of everything the client raises on purpose."""


class ApiError(ClientError):
    """The API refused a request: its HTTP status, the error's stable `code`, message and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if field is None else f"{code} ({field}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class WaitTimedOut(ClientError):
    """`wait(job, timeout_s=...)` ran out before the job finished."""
