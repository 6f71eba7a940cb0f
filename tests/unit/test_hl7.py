"""ER7 parsing, V2-to-FHIR mapping and ACKs, byte for byte."""

from __future__ import annotations

import pytest

from server.hl7.ack import build_ack
from server.hl7.er7 import Er7Error, check_structure, parse_er7, unescape
from server.hl7.mapping import plan_message
from tests.fixtures.hl7_messages import NOTE_LINES, adt, mdm


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_any_segment_terminator(separator: str) -> None:
    message = parse_er7(mdm("T02", control_id="C1", text_lines=["hello"], separator=separator))
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "PV1", "TXA", "ZPC", "OBX"]
    assert message.control_id == "C1" and message.message_type == ("MDM", "T02") and message.version == "2.5.1"


def test_custom_encoding_characters() -> None:
    text = mdm("T02", control_id="C2", text_lines=["a line"]).replace("^", "$").replace("~", "*")
    text = text.replace("MSH|$*\\&|", "MSH|$*\\&|")
    message = parse_er7(text)
    pid = message.first("PID")
    assert pid is not None and pid.value(5, 1) == "Okafor" and pid.value(5, 2) == "Grace"
    assert len(pid.repetitions(3)) == 2


def test_escape_sequences() -> None:
    encoding = parse_er7(mdm("T02", control_id="C3")).encoding
    assert unescape(r"a \F\ b \S\ c \T\ d \R\ e \E\ f", encoding) == "a | b ^ c & d ~ e \\ f"
    assert unescape(r"line one\.br\line two", encoding) == "line one\nline two"
    assert unescape(r"carriage\X0D\return", encoding) == "carriage\rreturn"
    assert unescape(r"\H\bold\N\ text", encoding) == "bold text"


def test_mapping_follows_v2_to_fhir() -> None:
    plan = plan_message(parse_er7(mdm("T02", control_id="C4", text_lines=NOTE_LINES)))
    patient = plan.patient
    assert patient["name"][0] == {"use": "official", "family": "Okafor", "given": ["Grace", "A"], "prefix": ["Mrs"]}
    assert patient["birthDate"] == "1956-03-14" and patient["gender"] == "female"
    assert {
        "value": "9434765919",
        "system": "https://fhir.nhs.uk/Id/nhs-number",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NH"}]},
    } in patient["identifier"]
    mrn = patient["identifier"][0]
    assert mrn["value"] == "MRN7001" and mrn["assigner"] == {"display": "RIVERSIDE"}
    assert patient["telecom"][0]["value"] == "0113 496 0000"
    document = plan.document
    assert document["masterIdentifier"]["value"] == "DOC-1" and document["docStatus"] == "final"
    assert document["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": "DS"}
    assert document["author"] == [{"display": "Amir Rahman"}]
    assert plan.encounter is not None and plan.encounter["identifier"] == [{"value": "V998877"}]
    assert plan.attachment is not None and plan.attachment.content_type == "text/plain"
    text = plan.attachment.content.decode()
    assert "Amlodipine 5 mg PO daily | with food" in text and "BP 132/84 mmHg\nHR 72 bpm" in text


@pytest.mark.parametrize(
    ("text", "code", "location"),
    [
        ("garbage without a header", "100", "MSH"),
        ("MSH|^~\\&|A|B|C|D|2026||MDM^T02|||2.5.1\r", "101", "MSH^1^10"),
        (mdm("T02", control_id="X", pid="", text_lines=["x"]).replace("\r\r", "\r"), "100", "PID"),
        (mdm("T02", control_id="X"), "101", "OBX^1^5"),
        (mdm("T99", control_id="X", text_lines=["x"]), "201", "MSH^1^9^2"),
        (adt("X"), "200", "MSH^1^9"),
    ],
)
def test_errors_carry_table_0357_codes(text: str, code: str, location: str) -> None:
    with pytest.raises(Er7Error) as caught:
        plan_message(parse_er7(text))
    assert (caught.value.code, caught.value.location) == (code, location)


def test_unsupported_version() -> None:
    with pytest.raises(Er7Error) as caught:
        check_structure(parse_er7(mdm("T02", control_id="V", version="2.1", text_lines=["x"])))
    assert caught.value.code == "203"


def test_ack_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    import datetime as dt

    message = parse_er7(mdm("T02", control_id="CTRL-9", text_lines=["x"]))
    ack = build_ack(message, "AA", now=dt.datetime(2026, 11, 23, 9, 0, 0))
    msh, msa = ack.rstrip("\r").split("\r")
    fields = msh.split("|")
    assert fields[:8] == ["MSH", "^~\\&", "PAPERCHART", "PC", "EPIC", "RIVERSIDE", "20261123090000", ""]
    assert fields[8] == "ACK^T02^ACK" and fields[10:12] == ["P", "2.5.1"]
    assert msa == "MSA|AA|CTRL-9"


def test_error_ack_has_err_segment_and_enhanced_mode_uses_commit_codes() -> None:
    message = parse_er7(mdm("T02", control_id="E1", text_lines=["x"]))
    ack = build_ack(message, "AE", error_code="101", error_text="PID-3 required", location="PID^1^3")
    assert ack.split("\r")[1] == "MSA|AE|E1"
    assert ack.split("\r")[2] == "ERR||PID^1^3|101^PID-3 required^HL70357|E"
    enhanced = parse_er7(mdm("T02", control_id="E2", text_lines=["x"], msh_extra="|||AL|NE"))
    assert build_ack(enhanced, "AA").split("\r")[1] == "MSA|CA|E2"
    unreadable = build_ack(None, "AR", error_code="100", error_text="no MSH", location="MSH")
    assert unreadable.split("\r")[1] == "MSA|AR|"


def test_header_check_is_remembered_per_header_shape_but_still_checks_time_and_id() -> None:
    from server.hl7 import er7

    er7._HEADER_VERDICTS.clear()
    first = parse_er7(mdm("T02", control_id="H1", text_lines=["x"]))
    check_structure(first)
    assert len(er7._HEADER_VERDICTS) == 1
    check_structure(parse_er7(mdm("T02", control_id="H2", text_lines=["x"])))  # same sender, new id and time
    assert len(er7._HEADER_VERDICTS) == 1
    bad_time = first.text.replace(first.msh.value(7), "yesterday", 1)
    with pytest.raises(Er7Error) as error:
        check_structure(parse_er7(bad_time))
    assert (error.value.code, error.value.location) == ("102", "MSH^1^7")


def test_base64_wrapped_by_the_sender_still_decodes() -> None:
    content = b"%PDF-1.4\n" + bytes(range(256)) * 4
    text = mdm("T02", control_id="W1", content=content)
    data = text.split("^Base64^")[1].split("|")[0]
    wrapped = " ".join(data[i : i + 76] for i in range(0, len(data), 76))  # MIME-style line length, spaces
    attachment = plan_message(parse_er7(text.replace(data, wrapped))).attachment
    assert attachment is not None and attachment.content == content
    with pytest.raises(Er7Error) as error:
        plan_message(parse_er7(text.replace(data, data[:40] + "!" + data[41:])))
    assert error.value.code == "102" and error.value.location == "OBX^1^5^5"
