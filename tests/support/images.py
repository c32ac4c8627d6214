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


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    """A JPEG of a colour gradient (so its scan holds varied entropy-coded data)."""
    image = Image.new("RGB", (width, height))
    image.putdata([(4 * x % 256, 5 * y % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
