"""Small real images, made in memory, for uploads and jobs."""

import base64
import io

from PIL import Image


def png_bytes(width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(**kwargs: object) -> str:
    """A PNG as the base64 text a job's inline `image` takes."""
    return base64.b64encode(png_bytes(**kwargs)).decode()  # type: ignore[arg-type]
