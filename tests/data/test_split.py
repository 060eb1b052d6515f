"""Split risks: leakage of a shipment across splits, and a gate set that changes under new data."""
from __future__ import annotations

import pandas as pd

from mmcore.config import SplitConfig
from mmcore.data.split import assign, split

CFG = SplitConfig(val_fraction=0.15, test_fraction=0.2, salt="t")


def profile(n: int, start: int = 0) -> pd.DataFrame:
    ids = range(start, start + n)
    return pd.DataFrame({"record_id": [f"r{i}" for i in ids], "shipment_id": [f"s{i // 3}" for i in ids],
                         "captured_at": [f"2026-01-01T00:00:{i % 60:02d}+00:00" for i in ids],
                         "label": ["normal" if i % 7 else None for i in ids]})


def test_no_shipment_in_two_splits_and_unlabelled_left_out() -> None:
    out = split(profile(3000), CFG)
    assert out.groupby("shipment_id")["split"].nunique().max() == 1
    assert out["label"].notna().all()
    shares = out["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.2) < 0.05 and abs(shares["val"] - 0.15) < 0.05


def test_gate_set_only_grows() -> None:
    before = split(profile(900), CFG)
    after = split(profile(1800), CFG)
    old_test = set(before.loc[before.split == "test", "record_id"])
    new_test = set(after.loc[after.split == "test", "record_id"])
    assert old_test <= new_test and len(new_test) > len(old_test)


def test_content_seen_before_keeps_the_split_of_its_first_occurrence() -> None:
    """A parcel landed again under new record and shipment ids must not cross into another split."""
    base = profile(600).assign(captured_at=[f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00" for i in range(600)],
                               content_sha256=[f"c{i}" for i in range(600)], image_sha256=[f"i{i}" for i in range(600)])
    first = split(base, CFG).set_index("record_id")["split"]
    again = base.assign(record_id=[f"dup{i}" for i in range(600)], shipment_id=[f"new{i}" for i in range(600)],
                        captured_at=[f"2026-02-01T00:{i // 60:02d}:{i % 60:02d}+00:00" for i in range(600)],
                        label=["damaged"] * 600)
    same_photo = again.assign(record_id=[f"photo{i}" for i in range(600)], content_sha256=None)
    out = split(pd.concat([base, again, same_photo]), CFG).set_index("record_id")["split"]
    for i in range(600):
        if f"r{i}" in first:
            assert out[f"dup{i}"] == out[f"photo{i}"] == first[f"r{i}"]
    assert (out[first.index] == first).all()                       # the originals keep their splits
    # without the content rule the copies would be spread by their new shipment ids
    moved = sum(assign(f"new{i}", CFG) != first[f"r{i}"] for i in range(600) if f"r{i}" in first)
    assert moved > 100


def test_first_occurrence_is_by_capture_time_not_table_order() -> None:
    rows = pd.DataFrame({"record_id": ["late", "early"], "shipment_id": ["s-late", "s-early"],
                         "captured_at": ["2026-03-01T00:00:00+00:00", "2026-01-01T00:00:00+08:00"],
                         "label": ["wet", "wet"], "content_sha256": ["same", "same"], "image_sha256": [None, None]})
    out = split(rows, CFG).set_index("record_id")["split"]
    assert out["late"] == out["early"] == assign("s-early", CFG)


def test_a_note_alone_is_not_a_parcels_identity() -> None:
    """Two parcels whose only modality is the note "ok" share a content hash but are not one parcel."""
    from mmcore.leak import overlap

    rows = pd.DataFrame({"record_id": ["a", "b"], "shipment_id": ["s-a", "s-b"],
                         "captured_at": ["2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"],
                         "label": ["normal", "normal"], "content_sha256": ["ok-hash", "ok-hash"],
                         "image_sha256": [None, None], "has_image": [False, False], "has_sensor": [False, False]})
    salt = next(s for s in (f"salt{i}" for i in range(100))
                if assign("s-a", SplitConfig(0.15, 0.2, s)) != assign("s-b", SplitConfig(0.15, 0.2, s)))
    out = split(rows, SplitConfig(0.15, 0.2, salt)).set_index("record_id")["split"]
    assert out["a"] != out["b"]                                     # each goes by its own shipment
    assert overlap(rows.iloc[:1], rows.iloc[1:], "t")["records"] == 0
    with_photo = rows.assign(has_image=True)
    assert overlap(with_photo.iloc[:1], with_photo.iloc[1:], "t")["records"] == 1
