"""First look at uploaded bytes: what they really are, and whether they are within limits.

Runs before anything is stored, so a lying content type, a corrupt or encrypted PDF, too many
pages or a decompression bomb is refused with nothing written. Reads headers only: no page
is decoded here.
"""

from __future__ import annotations

import io
import warnings
from typing import Final

import msgspec
import pypdfium2 as pdfium
from PIL import Image

from server.errors import TooLarge, UnprocessableDocument, UnsupportedMediaType

PDF: Final = "application/pdf"
PNG: Final = "image/png"
JPEG: Final = "image/jpeg"
TIFF: Final = "image/tiff"
TEXT: Final = "text/plain"  # transcribed notes, e.g. HL7 OBX TX/FT lines
SUPPORTED_TYPES: Final = (PDF, PNG, JPEG, TIFF, TEXT)

# Magic numbers: PDF 1.7 (ISO 32000-1 §7.5.2), PNG (RFC 2083 §3.1), JPEG SOI marker, TIFF 6.0 header.
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", PDF),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
)
_PIL_FORMATS: Final = {PNG: "PNG", JPEG: "JPEG", TIFF: "TIFF"}
_POINTS_PER_INCH: Final = 72.0


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_bytes: int
    max_pages: int
    max_page_pixels: int
    dpi: int


class DocumentInfo(msgspec.Struct, frozen=True, kw_only=True):
    content_type: str
    pages: int
    size: int


def sniff_content_type(content: bytes) -> str | None:
    """The content type the bytes really have, from their magic number; None if unknown."""
    # A PDF may have up to 1024 bytes of junk before its header (ISO 32000-1 Annex H.3 note).
    if b"%PDF-" in content[:1024]:
        return PDF
    for magic, content_type in _MAGIC:
        if content.startswith(magic):
            return content_type
    return None


def normalize_content_type(declared: str) -> str:
    base = declared.split(";", 1)[0].strip().lower()
    return {"image/jpg": JPEG, "image/tif": TIFF, "application/x-pdf": PDF}.get(base, base)


def inspect_document(content: bytes, declared_type: str, limits: Limits) -> DocumentInfo:
    """Check the bytes against their declared type and the limits; count pages."""
    if len(content) > limits.max_bytes:
        raise TooLarge(f"document is larger than the limit of {limits.max_bytes} bytes")
    if not content:
        raise UnprocessableDocument("document is empty")
    declared = normalize_content_type(declared_type)
    if declared not in SUPPORTED_TYPES:
        raise UnsupportedMediaType(
            f"content type {declared!r} is not supported; use one of {', '.join(SUPPORTED_TYPES)}"
        )
    if declared == TEXT:
        return DocumentInfo(content_type=TEXT, pages=_inspect_text(content, limits), size=len(content))
    actual = sniff_content_type(content)
    if actual is None:
        raise UnprocessableDocument(f"document bytes are not a {declared} (unrecognised file signature)")
    if actual != declared:
        raise UnprocessableDocument(f"document is declared as {declared} but its bytes are a {actual}")
    pages = _inspect_pdf(content, limits) if actual == PDF else _inspect_image(content, actual, limits)
    return DocumentInfo(content_type=actual, pages=pages, size=len(content))


def _inspect_text(content: bytes, limits: Limits) -> int:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise UnprocessableDocument("text/plain document is not UTF-8") from None
    if "\x00" in text:
        raise UnprocessableDocument("text/plain document contains binary data")
    pages = text.count("\f") + 1  # form feed separates pages
    if pages > limits.max_pages:
        raise TooLarge(f"text has {pages} pages; the limit is {limits.max_pages}")
    return pages


def open_pdf(content: bytes) -> pdfium.PdfDocument:
    """Open a PDF, turning pdfium's failures into PHI-free client errors."""
    try:
        return pdfium.PdfDocument(content)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise UnprocessableDocument("PDF is encrypted and needs a password; send it unencrypted") from None
        raise UnprocessableDocument("PDF is corrupt or truncated and cannot be read") from None


def _inspect_pdf(content: bytes, limits: Limits) -> int:
    pdf = open_pdf(content)
    try:
        count = len(pdf)
        if count == 0:
            raise UnprocessableDocument("PDF has no pages")
        if count > limits.max_pages:
            raise TooLarge(f"PDF has {count} pages; the limit is {limits.max_pages}")
        scale = limits.dpi / _POINTS_PER_INCH
        for index in range(count):
            width, height = pdf.get_page_size(index)
            if width * scale * height * scale > limits.max_page_pixels:
                raise TooLarge(f"page {index + 1} is too large to rasterize at {limits.dpi} dpi")
        return count
    finally:
        pdf.close()


def _inspect_image(content: bytes, content_type: str, limits: Limits) -> int:
    with warnings.catch_warnings():
        # PIL warns (and past 2x raises) on huge images; we apply our own, stricter limit below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(content))
        except Image.DecompressionBombError:
            raise TooLarge("image has more pixels than allowed (decompression bomb guard)") from None
        except Exception:
            raise UnprocessableDocument(f"{content_type} image is corrupt and cannot be read") from None
        with image:
            if image.format != _PIL_FORMATS[content_type]:
                raise UnprocessableDocument(f"document is declared as {content_type} but is not one")
            frames = getattr(image, "n_frames", 1)
            if frames > limits.max_pages:
                raise TooLarge(f"image has {frames} pages; the limit is {limits.max_pages}")
            for frame in range(frames):
                image.seek(frame)
                width, height = image.size
                if width * height > limits.max_page_pixels:
                    raise TooLarge(f"page {frame + 1} has more pixels than allowed (decompression bomb guard)")
                if width == 0 or height == 0:
                    raise UnprocessableDocument(f"page {frame + 1} has no pixels")
            return int(frames)
