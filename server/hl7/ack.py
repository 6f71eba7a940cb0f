"""ACK messages: original mode (AA/AE/AR) and enhanced mode accept acknowledgements (CA/CE/CR).

HL7 v2.5.1 §2.9.2 (original mode) and §2.9.3 (enhanced mode): the ACK's MSH swaps sending and
receiving application/facility, MSA-2 echoes the message's MSH-10, and an ERR segment carries
the HL7 error code (Table 0357), its location and severity.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

from server.hl7.er7 import Encoding, Er7Message, escape

_ERROR_TEXT: Final = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
# original-mode code -> enhanced-mode (accept) code
_ENHANCED: Final = {"AA": "CA", "AE": "CE", "AR": "CR"}


def enhanced_mode(message: Er7Message) -> bool:
    """MSH-15/16 present: the sender asked for enhanced acknowledgement."""
    return bool(message.msh.value(15) or message.msh.value(16))


def wants_accept_ack(message: Er7Message, code: str) -> bool:
    """MSH-15 accept ack type (Table 0155): AL always, NE never, ER only on error, SU only on success."""
    condition = message.msh.value(15).upper() or "AL"
    return condition == "AL" or (condition == "ER" and code != "AA") or (condition == "SU" and code == "AA")


def build_ack(
    message: Er7Message | None,
    code: str,
    *,
    error_code: str | None = None,
    error_text: str = "",
    location: str = "",
    now: dt.datetime | None = None,
) -> str:
    """The ACK for ``message`` (or for an unreadable one, with an empty MSA-2)."""
    encoding = message.encoding if message is not None else Encoding()
    f, c = encoding.field, encoding.component
    msh = message.msh if message is not None else None

    def value(number: int, component: int = 1) -> str:
        return msh.value(number, component) if msh is not None else ""

    timestamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    event = value(9, 2)
    msa_code = _ENHANCED[code] if message is not None and enhanced_mode(message) else code
    version = value(12) or "2.5.1"
    header = f"{encoding.component}{encoding.repetition}{encoding.escape}{encoding.subcomponent}"
    segments = [
        f"MSH{f}{header}{f}{escape(value(5), encoding)}{f}{escape(value(6), encoding)}{f}"
        f"{escape(value(3), encoding)}{f}{escape(value(4), encoding)}{f}{timestamp}{f}{f}ACK{c}{event}{c}ACK{f}"
        f"{uuid.uuid4().hex[:20]}{f}{value(11) or 'P'}{f}{version}",
        f"MSA{f}{msa_code}{f}{escape(value(10), encoding)}",
    ]
    if error_code:
        text = escape(error_text or _ERROR_TEXT.get(error_code, "Error"), encoding)
        location_field = location.replace("^", c)
        segments.append(f"ERR{f}{f}{location_field}{f}{error_code}{c}{text}{c}HL70357{f}E")
    return "\r".join(segments) + "\r"
