"""Errors raised by the blip2 library: one base class, one small subclass per failure.

Callers (the CLI, the job worker, the HTTP edge) map these to exit codes, job error
codes and HTTP statuses in one place each; every error carries a stable `code`.
"""


class Blip2Error(Exception):
    """Base class for every error this library raises on purpose; `field` names the argument at fault, where one is."""

    code = "blip2_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidImage(Blip2Error):
    """The bytes are not a decodable image of an allowed format."""

    code = "invalid_image"


class UnsupportedImageFormat(InvalidImage):
    """The image decodes, but its format is not on the allow-list (or, in the subclasses below, it is
    not the type the upload claimed, or it is something else besides an image)."""

    code = "unsupported_image_format"


class ImageTypeMismatch(UnsupportedImageFormat):
    """The bytes are an image of another type than the one the upload declared (a PNG sent as image/jpeg)."""

    code = "image_type_mismatch"


class ImagePolyglot(UnsupportedImageFormat):
    """The bytes are an image and something else too: data after the image's end, or embedded markup,
    script or an archive, which another program reading the same stored file would find and run."""

    code = "image_polyglot"


class ImageTooLarge(InvalidImage):
    """The image has more pixels than the configured limit (a decompression bomb guard)."""

    code = "image_too_large"


class ModelNotFound(Blip2Error):
    """The name is neither a registry entry, a local checkpoint directory nor a hub id."""

    code = "model_not_found"


class CheckpointUnavailable(Blip2Error):
    """The model is known but its weights cannot be had here (not downloaded, hub unreachable)."""

    code = "checkpoint_unavailable"


class InvalidCheckpoint(Blip2Error):
    """The checkpoint loaded but is inconsistent (e.g. processor and model disagree)."""

    code = "invalid_checkpoint"


class UnsupportedOperation(Blip2Error):
    """The operation is not offered by this model family (e.g. text features from an OPT model)."""

    code = "unsupported_operation"


class InvalidArgument(Blip2Error):
    """An argument is out of range or inconsistent with another (e.g. 3 images, 2 prompts)."""

    code = "invalid_argument"


class QuantizationUnavailable(Blip2Error):
    """The requested quantization cannot run here (bitsandbytes missing or no supported device)."""

    code = "quantization_unavailable"


class DatasetNotFound(Blip2Error):
    """No dataset is registered under that name, and the manifest has no entry for it."""

    code = "dataset_not_found"


class DatasetExists(Blip2Error):
    """A different dataset is already registered under that name."""

    code = "dataset_exists"


class InvalidDataset(Blip2Error):
    """A dataset file is malformed, or names a path outside the dataset's directory."""

    code = "invalid_dataset"


class DownloadFailed(Blip2Error):
    """A download could not be completed (HTTP error, or the connection kept failing)."""

    code = "download_failed"


class DownloadTooLarge(DownloadFailed):
    """The remote file is larger than the download may be (its size limit)."""

    code = "download_too_large"


class ChecksumMismatch(DownloadFailed):
    """The downloaded bytes are not the expected ones (sha256 or size differ)."""

    code = "checksum_mismatch"


class DownloadCanceled(Blip2Error):
    """The caller asked the download to stop."""

    code = "download_canceled"


class InvalidArchive(Blip2Error):
    """The file is not a readable zip or tar archive."""

    code = "invalid_archive"


class UnsafeArchive(InvalidArchive):
    """An archive member would land outside the target folder, or is a device or fifo."""

    code = "unsafe_archive"


class ArchiveTooLarge(UnsafeArchive):
    """An archive would expand past its limits: too many members, too many bytes, or a member compressed
    far more than real data ever is (a zip bomb)."""

    code = "archive_too_large"


class IncompatibleCheckpoint(Blip2Error):
    """A training checkpoint to resume from was written by a run with another task, seed or data."""

    code = "incompatible_checkpoint"


class ForbiddenUrl(Blip2Error):
    """The URL may not be fetched: a scheme other than http(s), or a host that resolves to a
    loopback, private, link-local or metadata address (server-side request forgery)."""

    code = "forbidden_url"
