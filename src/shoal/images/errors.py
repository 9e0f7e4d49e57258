"""What can go wrong with OCI images, as exceptions whose message tells a person what to do."""


class ImageError(Exception):
    """Base of every image error; str(error) is the whole, actionable message."""


class InvalidReference(ImageError, ValueError):
    """An OCI reference that does not parse."""


class RegistryUnreachable(ImageError):
    """The registry did not answer: down, wrong address, TLS mismatch, timeout."""


class TransferInterrupted(RegistryUnreachable):
    """The connection broke during a transfer; a rerun resumes it."""


class AuthError(ImageError):
    """The registry refused the credentials, or needs some and none were given."""


class AccessDenied(ImageError):
    """The credentials are valid but may not do this (HTTP 403)."""


class NotFound(ImageError):
    """No such repository, tag, manifest or blob."""


class NotAShoalImage(ImageError):
    """The manifest is not a shoal image (nor a containerDisk where one is accepted)."""


class ImageFormatError(ImageError):
    """A shoal manifest or config that is malformed (bad annotations, overlapping chunks)."""


class DigestMismatch(ImageError):
    """Bytes whose digest is not the one the manifest promised: corrupt or tampered."""


class DiskFull(ImageError):
    """No space left while writing an image; the partial download is kept for a rerun."""


class RegistryError(ImageError):
    """Any other refusal by the registry (bad request, server error, rate limit)."""
