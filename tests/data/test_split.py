"""Split risks: leakage of a shipment across splits, and a gate set that changes under new data."""
from __future__ import annotations

import pandas as pd

from mmcore.config import SplitConfig
from mmcore.data.split import split

CFG = SplitConfig(val_fraction=0.15, test_fraction=0.2, salt="t")


def profile(n: int, start: int = 0) -> pd.DataFrame:
    ids = range(start, start + n)
    return pd.DataFrame({"record_id": [f"r{i}" for i in ids], "shipment_id": [f"s{i // 3}" for i in ids],
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
