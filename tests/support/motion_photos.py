"""Motion photos as phones write them, built from a real JPEG: Google's Motion Photo and MicroVideo
(XMP in an APP1 segment, the MP4 appended) and Samsung's (the MP4 in a `MotionPhoto_Data` block of
an SEF trailer). `mp4()` is a minimal but well-formed ISO base media file: ftyp, mdat, moov(mvhd).

`MotionPhoto.still` is the JPEG with its metadata, what the service should store; `.file` is what
the phone saves. The builders take any bytes as the "video", so tests can declare a trailer that is
not one.
"""

from dataclasses import dataclass

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
SAMSUNG_VIDEO_TYPE = b"\x00\x00\x30\x0a"


@dataclass(frozen=True)
class MotionPhoto:
    still: bytes  # the JPEG alone
    file: bytes  # the JPEG, then the video (and, from Samsung, the rest of its trailer)


def box(kind: bytes, payload: bytes) -> bytes:
    """One ISO-BMFF box: 32-bit size (header included), 4-byte type, payload."""
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def mp4(frames: bytes = bytes(256)) -> bytes:
    """ftyp, then mdat (the "frames"), then moov holding a movie header (mvhd, version 0: 100 bytes)."""
    ftyp = box(b"ftyp", b"isom" + (512).to_bytes(4, "big") + b"isomiso2avc1mp41")
    identity = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000]
    mvhd = (
        bytes(4)  # version 0, no flags
        + bytes(8)  # creation and modification times
        + (1000).to_bytes(4, "big")  # timescale
        + (1500).to_bytes(4, "big")  # duration: 1.5 s
        + (0x10000).to_bytes(4, "big")  # rate 1.0
        + (0x100).to_bytes(2, "big")  # volume 1.0
        + bytes(10)  # reserved
        + b"".join(value.to_bytes(4, "big") for value in identity)  # matrix
        + bytes(24)  # pre-defined
        + (2).to_bytes(4, "big")  # next track id
    )
    assert len(mvhd) == 100
    return ftyp + box(b"mdat", frames) + box(b"moov", box(b"mvhd", mvhd))


def with_xmp(jpeg: bytes, xmp: str) -> bytes:
    """`jpeg` with an XMP APP1 segment right after its start-of-image marker."""
    payload = XMP_HEADER + xmp.encode()
    return jpeg[:2] + b"\xff\xe1" + (2 + len(payload)).to_bytes(2, "big") + payload + jpeg[2:]


def motion_photo_xmp(video_length: int) -> str:
    """Google's Motion Photo metadata (as a Pixel writes it) for a video of `video_length` bytes."""
    return f"""<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.1.0-jc003">
  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
    <rdf:Description rdf:about=""
        xmlns:GCamera="http://ns.google.com/photos/1.0/camera/"
        xmlns:Container="http://ns.google.com/photos/1.0/container/"
        xmlns:Item="http://ns.google.com/photos/1.0/container/item/"
      GCamera:MotionPhoto="1"
      GCamera:MotionPhotoVersion="1"
      GCamera:MotionPhotoPresentationTimestampUs="968644">
      <Container:Directory>
        <rdf:Seq>
          <rdf:li rdf:parseType="Resource">
            <Container:Item Item:Mime="image/jpeg" Item:Semantic="Primary" Item:Length="0" Item:Padding="0"/>
          </rdf:li>
          <rdf:li rdf:parseType="Resource">
            <Container:Item Item:Mime="video/mp4" Item:Semantic="MotionPhoto" Item:Length="{video_length}"/>
          </rdf:li>
        </rdf:Seq>
      </Container:Directory>
    </rdf:Description>
  </rdf:RDF>
</x:xmpmeta>"""


def micro_video_xmp(video_length: int) -> str:
    """Google's older MicroVideo metadata (MVIMG files): the video's offset from the end of the file."""
    return f"""<x:xmpmeta xmlns:x="adobe:ns:meta/">
  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
    <rdf:Description rdf:about="" xmlns:GCamera="http://ns.google.com/photos/1.0/camera/"
      GCamera:MicroVideo="1" GCamera:MicroVideoVersion="1"
      GCamera:MicroVideoOffset="{video_length}" GCamera:MicroVideoPresentationTimestampUs="1246333"/>
  </rdf:RDF>
</x:xmpmeta>"""


def google_motion_photo(jpeg: bytes, video: bytes, *, between: bytes = b"") -> MotionPhoto:
    """A Pixel's motion photo; `between` goes between the JPEG and the video (the XMP does not count it)."""
    still = with_xmp(jpeg, motion_photo_xmp(len(video)))
    return MotionPhoto(still, still + between + video)


def micro_video(jpeg: bytes, video: bytes) -> MotionPhoto:
    still = with_xmp(jpeg, micro_video_xmp(len(video)))
    return MotionPhoto(still, still + video)


def samsung_motion_photo(jpeg: bytes, video: bytes, *, sef_tail: bool = True) -> MotionPhoto:
    """A Galaxy's motion photo: blocks (type, name length, name, data) after the JPEG, then the SEF
    directory (`SEFH`, version, count, entries of type / offset back from the directory / size),
    its length and `SEFT`. Without `sef_tail`, only the `MotionPhoto_Data` block follows the JPEG."""
    blocks = [
        (b"\x00\x00\x01\x0a", b"Image_UTC_Data", b"1700000000123"),
        (SAMSUNG_VIDEO_TYPE, b"MotionPhoto_Data", video),
    ]
    trailer, starts = b"", []
    for kind, name, data in blocks:
        starts.append(len(trailer))
        trailer += kind + len(name).to_bytes(4, "little") + name + data
    if not sef_tail:
        return MotionPhoto(jpeg, jpeg + trailer[starts[1] :])
    entries = b""
    for (kind, name, data), start in zip(blocks, starts, strict=True):
        size = 8 + len(name) + len(data)
        entries += kind + (len(trailer) - start).to_bytes(4, "little") + size.to_bytes(4, "little")
    directory = b"SEFH" + (107).to_bytes(4, "little") + len(blocks).to_bytes(4, "little") + entries
    return MotionPhoto(jpeg, jpeg + trailer + directory + len(directory).to_bytes(4, "little") + b"SEFT")
