"""Archives made in memory, as a dataset server would serve them."""

import io
import tarfile


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz holding `members` (name -> bytes), names taken as given, `../` included."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
