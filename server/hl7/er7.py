"""HL7 v2 ER7 ("pipe and hat") encoding: framing constants, segments, fields, escapes.

Real interfaces send ``\\r``, ``\\n`` or ``\\r\\n`` between segments and may choose their own
encoding characters in MSH-1/MSH-2; both are honoured here. Escape sequences follow HL7 v2.5.1
§2.7 (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ and the formatting commands of FT such as \\.br\\).
Structure is checked with hl7apy (``check_structure``); values are read from the raw text so
escape sequences are decoded exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

# MLLP release 1 framing (HL7 v2.5.1 Appendix C): <VT> message <FS><CR>
MLLP_START: Final = b"\x0b"
MLLP_END: Final = b"\x1c\x0d"
SEGMENT_SEPARATOR: Final = "\r"
SUPPORTED_VERSIONS: Final = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")


class Er7Error(Exception):
    """The message cannot be read; ``location`` is an HL7 ERL such as ``MSH^1^9``."""

    def __init__(self, message: str, *, code: str = "100", location: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # HL7 Table 0357
        self.location = location


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass(frozen=True)
class Segment:
    name: str
    fields: tuple[str, ...]  # fields[n] is field n (fields[0] is the name; for MSH, MSH-1 is fields[1])
    encoding: Encoding
    # split fields, kept: an OBX-5 with a 10 MB document is read several times, split once
    _split: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def raw(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[str]:
        return list(self._parts(number, -1))

    def components(self, number: int, repetition: int = 0) -> list[str]:
        return list(self._parts(number, repetition))

    def _parts(self, number: int, repetition: int) -> tuple[str, ...]:
        """Field ``number``'s repetitions (``repetition`` -1), or one repetition's unescaped components."""
        parts = self._split.get((number, repetition))
        if parts is None:
            if repetition == -1:
                value = self.raw(number)
                if self.name == "MSH" and number == 2:
                    parts = (value,)
                else:
                    parts = tuple(value.split(self.encoding.repetition)) if value else ()
            else:
                reps = self._parts(number, -1)
                parts = (
                    tuple(unescape(c, self.encoding) for c in reps[repetition].split(self.encoding.component))
                    if repetition < len(reps)
                    else ()
                )
            self._split[(number, repetition)] = parts
        return parts

    def value(self, number: int, component: int = 1, repetition: int = 0) -> str:
        parts = self._parts(number, repetition)  # the cached tuple itself, not a copy
        if component - 1 < len(parts):
            return parts[component - 1].partition(self.encoding.subcomponent)[0]
        return ""

    def text(self, number: int) -> str:
        """The whole field, unescaped, repetitions joined by newlines (for TX/FT text)."""
        return "\n".join(unescape(r, self.encoding) for r in self.repetitions(number))


@dataclass(frozen=True)
class Er7Message:
    segments: tuple[Segment, ...]
    encoding: Encoding
    text: str  # normalized: segments joined by \r

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def control_id(self) -> str:
        return self.msh.value(10)

    @property
    def message_type(self) -> tuple[str, str]:
        return self.msh.value(9, 1), self.msh.value(9, 2)

    @property
    def version(self) -> str:
        return self.msh.value(12)


_HEX = re.compile(r"[0-9A-Fa-f]{2}")


def unescape(value: str, encoding: Encoding) -> str:
    esc = encoding.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] != esc:
            out.append(value[i])
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end == -1:  # a lone escape character: keep it as text
            out.append(value[i:])
            break
        sequence = value[i + 1 : end]
        i = end + 1
        replacement = {
            "F": encoding.field,
            "S": encoding.component,
            "T": encoding.subcomponent,
            "R": encoding.repetition,
            "E": encoding.escape,
            ".br": "\n",
            "H": "",
            "N": "",
        }.get(sequence)
        if replacement is not None:
            out.append(replacement)
        elif sequence.startswith("X") and len(sequence) > 1:
            hexdigits = sequence[1:]
            try:
                out.append(bytes.fromhex(hexdigits).decode("latin-1") if _HEX.match(hexdigits) else "")
            except ValueError:
                out.append("")
        elif sequence.startswith((".sp", ".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
            out.append("\n" if sequence.startswith(".sp") else "")
        else:
            out.append(f"{esc}{sequence}{esc}")  # unknown: keep as written
    return "".join(out)


def escape(text: str, encoding: Encoding) -> str:
    """Text as an ER7 value: the encoding characters as escape sequences; line ends become spaces
    (\\.br\\ is for FT fields only)."""
    out = text.replace(encoding.escape, f"{encoding.escape}E{encoding.escape}")
    for char, code in (
        (encoding.field, "F"),
        (encoding.component, "S"),
        (encoding.repetition, "R"),
        (encoding.subcomponent, "T"),
    ):
        out = out.replace(char, f"{encoding.escape}{code}{encoding.escape}")
    return out.replace("\r", " ").replace("\n", " ")


def normalize(text: str) -> tuple[str, list[str]]:
    """The text with segments separated by \r only, surrounding whitespace and blank lines
    removed, and its segments. A message already so (the usual case) is not copied: on a 10 MB
    message each pass over the text costs milliseconds."""
    text = text.strip("\x00 \t\r\n\x0b\x1c")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = text.split("\r")
    if not all(line.strip() for line in lines):
        lines = [line for line in lines if line.strip()]
        text = SEGMENT_SEPARATOR.join(lines)
    return text, lines


def parse_er7(text: str) -> Er7Message:
    normalized, lines = normalize(text)
    if not normalized.startswith("MSH") or len(normalized) < 8:
        raise Er7Error("message does not start with an MSH segment", code="100", location="MSH")
    field_sep = normalized[3]
    header_end = normalized.find(field_sep, 4)
    encoding_chars = normalized[4:header_end] if header_end != -1 else ""
    if field_sep.isalnum() or len(encoding_chars) < 4:
        raise Er7Error("MSH-1/MSH-2 encoding characters are missing or invalid", code="102", location="MSH^1^2")
    encoding = Encoding(
        field=field_sep,
        component=encoding_chars[0],
        repetition=encoding_chars[1],
        escape=encoding_chars[2],
        subcomponent=encoding_chars[3],
    )
    segments: list[Segment] = []
    for line in lines:
        name = line[:3]
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
            raise Er7Error("a segment has an invalid name", code="100", location=f"{len(segments) + 1}")
        parts = line.split(field_sep)
        # MSH-1 is the field separator itself, so MSH fields shift by one
        fields = (name, field_sep, *parts[1:]) if name == "MSH" else tuple(parts)
        segments.append(Segment(name=name, fields=fields, encoding=encoding))
    message = Er7Message(segments=tuple(segments), encoding=encoding, text=normalized)
    if not message.control_id:
        raise Er7Error("MSH-10 message control id is required", code="101", location="MSH^1^10")
    if not message.message_type[0]:
        raise Er7Error("MSH-9 message type is required", code="101", location="MSH^1^9")
    return message


# HL7 v2.5.1 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM: Final = re.compile(r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?)?)?(?:[+-]\d{4})?")
_HEADER_CACHE_SIZE: Final = 4096
_HEADER_VERDICTS: dict[str, bool] = {}


def check_structure(message: Er7Message) -> None:
    """Let hl7apy parse the message (tolerant mode, Z-segments allowed) to catch what we do not read."""
    if message.version not in SUPPORTED_VERSIONS:
        raise Er7Error(f"HL7 version {message.version or '(none)'} is not supported", code="203", location="MSH^1^12")
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    # hl7apy (versions 2.3-2.8.2) builds an object per component, ~6 ms a segment and 70 ms for a
    # typical MDM: on the receipt path it checks the header only; PID, TXA and OBX are read and
    # checked by our own mapping (required fields, data types, base64), with Table 0357 errors.
    # A sender's headers differ only in MSH-7 (time) and MSH-10 (control id): those two are checked
    # here, and hl7apy's verdict on the rest of the header is remembered per distinct header shape.
    header = message.text[: message.text.find(SEGMENT_SEPARATOR)] if len(message.segments) > 1 else message.text
    if not _DTM.fullmatch(message.msh.value(7)):
        raise Er7Error("MSH-7 is not an HL7 date/time", code="102", location="MSH^1^7")
    fields = header.split(message.encoding.field)
    if len(fields) > 9:
        fields[6], fields[9] = "20000101000000", "X"  # MSH-7 and MSH-10 (MSH-1 is the separator itself)
    shape = message.encoding.field.join(fields)
    verdict = _HEADER_VERDICTS.get(shape)
    if verdict is None:
        try:
            parse_message(header, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
            verdict = True
        except (HL7apyException, ValueError, KeyError, IndexError, AttributeError):
            verdict = False
        if len(_HEADER_VERDICTS) >= _HEADER_CACHE_SIZE:
            _HEADER_VERDICTS.clear()
        _HEADER_VERDICTS[shape] = verdict
    if not verdict:
        raise Er7Error("message structure cannot be parsed", code="100", location="MSH")
