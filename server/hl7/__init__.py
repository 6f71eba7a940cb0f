"""HL7 v2: ER7 parsing, V2-to-FHIR mapping, ACKs, the MLLP listener and the receiving service (in);
ORU^R01 results delivered from the outbox (out)."""

from server.hl7.er7 import MLLP_END, MLLP_START, Er7Error, parse_er7
from server.hl7.mllp import Batches, MllpServer, tls_context
from server.hl7.outbound import ResultSender
from server.hl7.service import Hl7Service

__all__ = [
    "MLLP_END",
    "MLLP_START",
    "Batches",
    "Er7Error",
    "Hl7Service",
    "MllpServer",
    "ResultSender",
    "parse_er7",
    "tls_context",
]
