"""SMART scopes v1 and v2: parsing, what each grants, patient compartments and query constraints."""

from __future__ import annotations

import pytest

from server.auth.scopes import Grant, ScopeError, narrow, parse_scope

LAB = {
    "resourceType": "Observation",
    "id": "o1",
    "subject": {"reference": "Patient/p1"},
    "category": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
    ],
}
VITAL = {**LAB, "id": "o2", "category": [{"coding": [{"code": "vital-signs"}]}]}


@pytest.mark.parametrize(
    ("scope", "letters"),
    [
        ("patient/Observation.read", "rs"),
        ("user/*.write", "cud"),
        ("system/*.*", "cruds"),
        ("system/Observation.rs", "rs"),
        ("user/DocumentReference.cu", "cu"),
        ("patient/Condition.cruds", "cruds"),
        ("system/Patient.s", "s"),
    ],
)
def test_v1_and_v2_scopes_grant_their_interactions(scope: str, letters: str) -> None:
    permission = parse_scope(scope)
    assert permission is not None and permission.interactions == frozenset(letters)


@pytest.mark.parametrize(
    "scope",
    [
        "system/Observation.sr",
        "system/Observation.rr",
        "system/Observation.x",
        "system/observation.rs",
        "admin/Observation.rs",
        "system/Observation.",
        "system/Observation.rs?",
        "system/Observation.rs?category",
    ],
)
def test_malformed_resource_scopes_are_rejected(scope: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(scope)


def test_non_resource_scopes_are_kept_aside() -> None:
    grant = Grant.from_scopes(["openid", "fhirUser", "launch/patient", "offline_access", "user/*.rs"])
    assert grant.other == {"openid", "fhirUser", "launch/patient", "offline_access"}
    assert grant.may("Condition", "r") and grant.may("Condition", "s") and not grant.may("Condition", "c")


def test_patient_scopes_reach_only_the_launch_patient() -> None:
    grant = Grant.from_scopes(["patient/Observation.rs"], patient="p1")
    assert grant.permits(LAB, "r", "p1")
    assert not grant.permits(LAB, "r", "p2")
    assert grant.patient_only("Observation", "s")
    assert not Grant.from_scopes(["patient/Observation.rs"]).may("Observation", "r")  # no launch patient


def test_user_permission_is_not_limited_to_a_patient() -> None:
    grant = Grant.from_scopes(["patient/Observation.rs", "user/Observation.rs"], patient="p1")
    assert grant.permits(LAB, "r", "p2") and not grant.patient_only("Observation", "s")


def test_query_constrained_scope_filters_by_category() -> None:
    grant = Grant.from_scopes(["system/Observation.rs?category=laboratory"])
    assert grant.permits(LAB, "r", "p1") and not grant.permits(VITAL, "r", "p1")
    with_system = Grant.from_scopes(
        ["system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"]
    )
    assert with_system.permits(LAB, "r", None)
    assert not Grant.from_scopes(["system/Observation.rs?category=other|laboratory"]).permits(LAB, "r", None)


def test_a_constraint_we_cannot_evaluate_grants_nothing() -> None:
    assert not Grant.from_scopes(["system/Observation.rs?date=ge2020"]).permits(LAB, "r", None)


def test_wildcard_type_and_wrong_type() -> None:
    grant = Grant.from_scopes(["system/*.rs", "system/DocumentReference.c"])
    assert grant.may("Patient", "r") and grant.may("DocumentReference", "c")
    assert not grant.may("Patient", "c") and not grant.may("Observation", "d")


def test_narrow_issues_only_what_is_allowed() -> None:
    allowed = ["system/*.rs", "system/DocumentReference.c"]
    requested = [
        "system/Observation.rs",
        "system/Observation.cruds",
        "system/DocumentReference.c",
        "openid",
        "system/bad",
    ]
    assert narrow(requested, allowed) == ["system/Observation.rs", "system/DocumentReference.c"]
    # a user with user/ read may launch a patient/ read app, not a write one
    assert narrow(["patient/Condition.rs", "patient/Condition.c"], ["patient/*.cruds"], ["user/*.rs"]) == [
        "patient/Condition.rs"
    ]
    # a constrained allowance narrows a wider request to the same constraint
    assert narrow(["system/Observation.rs"], ["system/Observation.rs?category=laboratory"]) == [
        "system/Observation.rs?category=laboratory"
    ]
    # a wide request is cut down to what the user may do, not refused
    assert narrow(["user/*.cruds"], ["user/*.cruds"], ["user/Observation.rs", "user/Patient.r"]) == [
        "user/Observation.rs",
        "user/Patient.r",
    ]
    assert narrow(["user/*.cu"], ["user/*.cu"], ["user/*.rs"]) == []
    assert narrow(["system/Patient.rs"], ["system/Observation.rs"]) == []
    assert narrow(["system/Observation.rs?category=laboratory"], ["system/Observation.rs"]) == [
        "system/Observation.rs?category=laboratory"
    ]
