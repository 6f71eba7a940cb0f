"""Receiving HL7 v2 messages: parse, map, store durably, then acknowledge.

``AA`` is returned only after the message's document (and patient, and the extraction job) are
committed to the store in one transaction, shared with the messages that arrive at the same
time (the MLLP listener hands them over as a batch; HTTP callers meet in the store's group
commit): one disk flush for all, each message's writes in its own savepoint. A
message whose MSH-10 was already committed gets its original ACK again and changes nothing:
interface engines resend on timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from server.config import Settings
from server.errors import PaperchartError
from server.hl7.ack import build_ack, enhanced_mode, wants_accept_ack
from server.hl7.er7 import Er7Error, Er7Message, check_structure, parse_er7
from server.hl7.mapping import DocumentPlan, plan_message
from server.pipeline import Pipeline
from server.pipeline.inspect import DocumentInfo
from server.store import Store

logger = logging.getLogger(__name__)

# Errors in Table 0357 that mean "we do not handle this kind of message" -> AR, not AE
_REJECT_CODES = frozenset({"200", "201", "202", "203"})


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # HL7 v2 default character set is ASCII; 8859/1 is the common extension


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What receiving one message came to."""

    ack: str | None  # None when the sender asked for no accept acknowledgement (enhanced mode)
    code: str  # HL7 Table 0008: AA, AE or AR
    queued: bool  # an extraction job was queued


class _Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """A message parsed, mapped and inspected, ready to be stored."""

    message: Er7Message
    sender: str  # MSH-3|MSH-4: control ids are unique per sending application and facility
    plan: DocumentPlan
    info: DocumentInfo | None  # the attachment's content type and pages, when there is one


class Hl7Service:
    """Turns messages into stored documents and queued extraction jobs. Thread-safe (the store is)."""

    def __init__(self, settings: Settings, store: Store, pipeline: Pipeline) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline

    def receive(self, raw: bytes, *, audit: Callable[[str], object] | None = None) -> Receipt:
        """Parse, store and acknowledge one message (see ``receive_many``)."""
        return self.receive_many([raw], audit=audit)[0]

    def receive_many(self, raws: Sequence[bytes], *, audit: Callable[[str], object] | None = None) -> list[Receipt]:
        """Parse, store and acknowledge messages that arrived together, in order; one receipt each.

        Each message is parsed and mapped first, outside any transaction (a large PDF is not
        opened while the store is locked); then all are stored in one transaction, each in a
        savepoint of its own (one message's error undoes only its writes), and committed
        together; the receipts are returned once that commit is on disk.

        ``audit`` is called with each message's acknowledgement code (AA, AE or AR): inside the
        transaction when the message reaches it, so that its audit record is committed with it
        or not at all; on its own otherwise.
        """
        steps = [self._prepare(raw, audit) for raw in raws]
        pending = [step for step in steps if isinstance(step, _Prepared)]
        stored: list[Receipt] = []
        if pending:
            try:
                stored = self.store.batched(lambda: [self._store_one(step, audit) for step in pending])
            except Exception as exc:  # the COMMIT failed: none of them is stored
                logger.error("%d HL7 message(s) could not be committed: %s", len(pending), type(exc).__name__)
                stored = [self._refused(step.message, audit) for step in pending]
        receipts = iter(stored)
        return [next(receipts) if isinstance(step, _Prepared) else step for step in steps]

    def _prepare(self, raw: bytes, audit: Callable[[str], object] | None) -> Receipt | _Prepared:
        """Everything that needs no transaction: parse, check, map, inspect the attachment. A
        message that fails here, or one already committed (a resend), is answered at once."""
        try:
            message = parse_er7(decode(raw))
        except Er7Error as exc:
            ack = build_ack(None, "AR", error_code=exc.code, error_text=exc.message, location=exc.location)
            return self._audited(Receipt(ack=ack, code="AR", queued=False), audit, None)
        sender = f"{message.msh.value(3)}|{message.msh.value(4)}"
        previous = self.store.hl7_ack(sender, message.control_id)
        if previous is not None:  # checked again in the transaction; this saves the work of a resend
            return self._resent(message, previous, audit)
        try:
            check_structure(message)
            plan = plan_message(message)
            info = (
                self.pipeline.inspect(plan.attachment.content, plan.attachment.content_type)
                if plan.attachment is not None
                else None
            )
        except Exception as exc:
            return self._failed(message, exc, audit, "mapped")
        return _Prepared(message=message, sender=sender, plan=plan, info=info)

    def _store_one(self, step: _Prepared, audit: Callable[[str], object] | None) -> Receipt:
        """Inside the group's transaction: one message's writes in a savepoint of their own."""
        message = step.message
        try:
            # a resend that arrived while the original was being stored, or in the same batch
            previous = self.store.hl7_ack(step.sender, message.control_id)
            if previous is not None:
                return self._resent(message, previous, audit)
            ack, queued = self.store.batched(lambda: self._store(step, audit))
            return self._as_requested(message, Receipt(ack=ack, code="AA", queued=queued))
        except Exception as exc:
            return self._failed(message, exc, audit, "stored")

    def _resent(self, message: Er7Message, ack: str, audit: Callable[[str], object] | None) -> Receipt:
        logger.info("HL7 message %s is a resend; returning its original ACK", message.control_id)
        return self._audited(Receipt(ack=ack, code="AA", queued=False), audit, None)  # always answered

    def _failed(
        self, message: Er7Message, exc: Exception, audit: Callable[[str], object] | None, stage: str
    ) -> Receipt:
        """The answer to a message that could not be ``stage`` (mapped, stored)."""
        if isinstance(exc, Er7Error):
            code = "AR" if exc.code in _REJECT_CODES else "AE"
            ack = build_ack(message, code, error_code=exc.code, error_text=exc.message, location=exc.location)
            return self._audited(Receipt(ack=ack, code=code, queued=False), audit, message)
        if isinstance(exc, PaperchartError):
            # the embedded document is unusable (corrupt, too large, lying type): a content error
            ack = build_ack(message, "AE", error_code="102", error_text=exc.message, location="OBX^1^5")
            return self._audited(Receipt(ack=ack, code="AE", queued=False), audit, message)
        logger.error("HL7 message %s could not be %s: %s", message.control_id, stage, type(exc).__name__)
        return self._refused(message, audit)

    def _refused(self, message: Er7Message, audit: Callable[[str], object] | None) -> Receipt:
        ack = build_ack(message, "AR", error_code="207", error_text="the message could not be stored; resend it")
        return self._audited(Receipt(ack=ack, code="AR", queued=False), audit, message)

    @staticmethod
    def _audited(receipt: Receipt, audit: Callable[[str], object] | None, message: Er7Message | None) -> Receipt:
        if audit is not None:
            audit(receipt.code)
        return Hl7Service._as_requested(message, receipt) if message is not None else receipt

    @staticmethod
    def _as_requested(message: Er7Message, receipt: Receipt) -> Receipt:
        """Without the ACK when the sender asked for no accept acknowledgement of this outcome."""
        if enhanced_mode(message) and not wants_accept_ack(message, receipt.code):
            return msgspec.structs.replace(receipt, ack=None)
        return receipt

    def _find(self, number: str | None) -> str | None:
        """The live document with this unique number: an edit (T08) leaves older, superseded ones."""
        if not number:
            return None
        records = [
            r
            for i in self.store.find_by_identifier("DocumentReference", None, number)
            if (r := self.store.get_document(i)) is not None
        ]
        live = [r for r in records if r.resource.get("status") == "current"] or records
        return max(live, key=lambda r: r.created_at).id if live else None

    def _store(self, step: _Prepared, audit: Callable[[str], object] | None) -> tuple[str, bool]:
        """The message's writes and its audit record, all or nothing."""
        message, plan, info = step.message, step.plan, step.info
        ack = build_ack(message, "AA")
        document_id: str | None = None
        queued = False
        self.store.put_resource(plan.patient)
        if plan.encounter is not None:
            self.store.put_resource(plan.encounter)
        existing = self._find(plan.document_number)
        action = plan.action
        if action == "notify":
            action = "create" if plan.attachment is not None and existing is None else "notify"
        if action == "create":
            if existing is not None:
                raise Er7Error(
                    "a document with this TXA-12 unique document number already exists",
                    code="205",
                    location="TXA^1^12",
                )
            document_id = self._create(plan, info, [])
            queued = True
        elif action in ("append", "replace", "edit"):
            parent = self._find(plan.parent_number) or (existing if action == "edit" else None)
            if parent is None:
                raise Er7Error("the parent document (TXA-13) is not known", code="204", location="TXA^1^13")
            relation = "appends" if action == "append" else "replaces"
            document_id = self._create(
                plan, info, [{"code": relation, "target": {"reference": f"DocumentReference/{parent}"}}]
            )
            if relation == "replaces":
                self._set_status(parent, status="superseded")
            queued = True
        elif action == "status":
            if existing is None:
                raise Er7Error("the document (TXA-12) is not known", code="204", location="TXA^1^12")
            self._set_status(existing, status=plan.document["status"], doc_status=plan.document.get("docStatus"))
            document_id = existing
        elif action == "cancel":
            if existing is None:
                raise Er7Error("the document to cancel (TXA-12) is not known", code="204", location="TXA^1^12")
            self._set_status(existing, status="entered-in-error")
            self.store.retract_document_results(existing)
            document_id = existing
        self.store.record_hl7(step.sender, message.control_id, ack, document_id)
        if audit is not None:
            audit("AA")  # in this transaction: the message is not stored without its audit record
        return ack, queued

    def _create(self, plan: DocumentPlan, info: DocumentInfo | None, relates_to: list[dict[str, Any]]) -> str:
        if plan.attachment is None or info is None:
            raise Er7Error("the message has no document content (OBX-5)", code="101", location="OBX^1^5")
        resource = dict(plan.document)
        if relates_to:
            resource["relatesTo"] = relates_to
        resource["content"] = [{"attachment": {"contentType": info.content_type, "size": info.size}}]
        record = self.store.create_document(resource, plan.attachment.content, info.content_type, info.pages)
        self.store.enqueue_job(record.id)
        return record.id

    def _set_status(self, document_id: str, *, status: str, doc_status: str | None = None) -> None:
        record = self.store.get_document(document_id)
        if record is None:
            return
        resource = dict(record.resource)
        resource["status"] = status
        if doc_status:
            resource["docStatus"] = doc_status
        self.store.update_document(document_id, resource)
