"""Uploaded bytes are checked against their declared type and the limits before anything is stored."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from server.errors import TooLarge, UnprocessableDocument, UnsupportedMediaType
from server.pipeline.inspect import Limits, inspect_document, sniff_content_type

LIMITS = Limits(max_bytes=5_000_000, max_pages=3, max_page_pixels=20_000_000, dpi=200)


def make_pdf(pages: int = 1, *, password: str | None = None) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, encrypt=password)
    for number in range(pages):
        canvas.drawString(72, 720, f"Page {number + 1} of a synthetic letter")
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def make_png(width: int = 200, height: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge all-white greyscale image (IHDR + one zlib stream)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * width
    data = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_a_pdf_is_counted() -> None:
    info = inspect_document(make_pdf(2), "application/pdf", LIMITS)
    assert (info.content_type, info.pages) == ("application/pdf", 2)


def test_images_and_multipage_tiff() -> None:
    assert inspect_document(make_png(), "image/png", LIMITS).pages == 1
    frames = [Image.new("L", (100, 100), 255) for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    assert inspect_document(buffer.getvalue(), "image/tiff", LIMITS).pages == 3


@pytest.mark.parametrize(
    ("content", "declared", "error", "words"),
    [
        (b"", "application/pdf", UnprocessableDocument, "empty"),
        (b"hello world", "application/pdf", UnprocessableDocument, "signature"),
        (make_png(), "application/pdf", UnprocessableDocument, "declared as application/pdf"),
        (make_pdf(), "image/png", UnprocessableDocument, "declared as image/png"),
        (make_pdf(), "text/html", UnsupportedMediaType, "not supported"),
        (b"%PDF-1.4\n%garbage that is not a PDF body", "application/pdf", UnprocessableDocument, "corrupt"),
        (make_pdf()[:400], "application/pdf", UnprocessableDocument, "corrupt"),
        (make_pdf(password="secret"), "application/pdf", UnprocessableDocument, "encrypted"),
        (make_pdf(4), "application/pdf", TooLarge, "4 pages"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", UnprocessableDocument, "corrupt"),
        (png_bomb(50_000, 50_000), "image/png", TooLarge, "decompression bomb"),
    ],
)
def test_bad_documents_are_refused_clearly(content: bytes, declared: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as caught:
        inspect_document(content, declared, LIMITS)
    assert words in str(caught.value)


def test_oversized_upload() -> None:
    with pytest.raises(TooLarge):
        inspect_document(make_pdf(), "application/pdf", Limits(max_bytes=100, max_pages=3, max_page_pixels=1, dpi=200))


def test_sniffing() -> None:
    assert sniff_content_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_content_type(b"II*\x00rest") == "image/tiff"
    assert sniff_content_type(b"junk%PDF-1.7") == "application/pdf"
    assert sniff_content_type(b"GIF89a") is None
