"""/predict's optional landing context (hub, shipment_id, captured_at) is checked as ingest checks a
landing record (mmcore.data.checks): what ingest would quarantine is a 400 naming the record, what it
accepts is kept, captured_at in UTC. Hypothesis draws the values."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mmcore.data.checks import Rejected, check_timestamp
from mmcore.schema import RECORD_ID_RE
from mmcore.serving.schemas import PredictInput

ZONES = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
TIMES = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2026, 1, 1), timezones=ZONES)


def body(**context: object) -> dict:
    return {"records": [{"note": "fine"}, {"note": "wet corner", **context}]}


@settings(max_examples=60, deadline=None)
@given(TIMES, st.from_regex(RECORD_ID_RE, fullmatch=True), st.from_regex(RECORD_ID_RE, fullmatch=True))
def test_valid_context_is_kept_and_captured_at_is_utc(at: datetime, hub: str, shipment: str) -> None:
    rec = PredictInput.model_validate(body(hub=hub, shipment_id=shipment, captured_at=at.isoformat())).records[1]
    assert (rec.hub, rec.shipment_id) == (hub, shipment)
    assert datetime.fromisoformat(rec.captured_at) == at and rec.captured_at.endswith("+00:00")


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=40))
def test_a_captured_at_ingest_would_quarantine_is_refused_naming_the_record(value: str) -> None:
    try:
        check_timestamp(value, "captured_at")
        ingest_accepts = True
    except Rejected:
        ingest_accepts = False
    if ingest_accepts:
        PredictInput.model_validate(body(captured_at=value))
        return
    with pytest.raises(ValidationError) as err:
        PredictInput.model_validate(body(captured_at=value))
    assert [e["loc"] for e in err.value.errors()] == [("records", 1, "captured_at")]


@pytest.mark.parametrize("value", ["2026-11-30T10:00:00", "yesterday", "2099-01-01T00:00:00Z", "1999-12-31T23:00:00Z"])
def test_times_without_zone_or_outside_the_sane_window_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="captured_at"):
        PredictInput.model_validate(body(captured_at=value))


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=70))
def test_hub_and_shipment_follow_the_id_rule(value: str) -> None:
    for field in ("hub", "shipment_id"):
        if RECORD_ID_RE.fullmatch(value):
            assert getattr(PredictInput.model_validate(body(**{field: value})).records[1], field) == value
        else:
            with pytest.raises(ValidationError) as err:
                PredictInput.model_validate(body(**{field: value}))
            assert [e["loc"] for e in err.value.errors()] == [("records", 1, field)]


def test_a_replayed_landing_record_is_a_valid_request_with_its_context(tmp_path) -> None:
    """mmcore.monitor.replay sends a batch's records with their hub, shipment and capture time."""
    from mmcore.monitor.replay import api_record
    from tests.conftest import good_files, record, write_batch

    rec = record("r1", hub="AMS04", shipment_id="S-9")
    bdir = write_batch(tmp_path, "b1", [rec], good_files("r1"))
    sent = PredictInput.model_validate({"records": [api_record(rec, bdir)]}).records[0]
    assert (sent.hub, sent.shipment_id, sent.captured_at) == ("AMS04", "S-9", "2026-11-19T19:10:00+00:00")
