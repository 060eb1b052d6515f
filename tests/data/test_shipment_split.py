"""Why the gate set is split by shipment (DESIGN §3), measured on generated data.

A shipment is one parcel: every record of it photographs the same box, and from its
onset on every record carries the same class. A record-level split therefore puts
the parcel of most gate-set records, in the same condition, into training. These
tests show that on data from the default generator settings, through the project's
real frozen encoders and fused head:

* the leak is there: a record split puts the parcels of most test records into
  training, and the frozen image encoder sees one parcel's photos as alike;
* the shipment split's gate figure is an honest estimate: it matches the macro-F1
  on a batch of new shipments generated with another seed.

Measured with these sizes on five seed pairs (6 splits of each kind per pair): a
record split's gate figure exceeds the new shipments' by +0.027 on average (-0.002 to
+0.053), the shipment split's by +0.006 (-0.019 to +0.024). The frozen-encoder head
learns the evidence rather than the parcels, so the inflation is real but smaller
than the spread between seeds: the test prints the record split's figures and does
not assert them. (Giving all photos of a parcel one floor and pose raised it by only 0.01-0.02.)
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmcore.config import CLASSES, Params, load_params
from mmcore.synth.generate import generate_batch
from mmcore.data.split import split
from mmcore.evaluate import macro_f1
from mmcore.features import Featurizer
from mmcore.predict import Predictor
from mmcore.train import train_bundle

ROOT = Path(__file__).resolve().parents[2]
N_DEV, N_NEW = 600, 300      # dev records split three ways; new shipments scored by every model
IMAGE = 96                   # generated and model image side: embedding 900 photos takes seconds on 2 cores
EPOCHS = 30
SPLITS = 6                   # splits per kind: the gate figure of one ~120-record split spreads by about 0.04
GATE_TOLERANCE = 0.06        # shipment split: |mean gate figure - new-shipment figure|, about 2 sd


@dataclass
class Data:
    params: Params
    featurizer: Featurizer
    dev: pd.DataFrame                      # labelled dev records: record_id, shipment_id, captured_at, label
    dev_records: list[dict[str, Any]]      # aligned with `dev`, serving format (mmcore.features)
    new: pd.DataFrame
    new_records: list[dict[str, Any]]


def landing_records(batch: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Labelled records of a landing batch, as a profile and in the serving format."""
    rows, records = [], []
    for line in (batch / "records.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["label"] is None:
            continue
        sensor = None
        if rec["sensor"]:
            with open(batch / rec["sensor"], newline="", encoding="utf-8") as f:
                header, *values = list(csv.reader(f))
            sensor = {name: [float(v[i]) for v in values] for i, name in enumerate(header)}
        image = (batch / rec["image"]).read_bytes() if rec["image"] else None
        rows.append({k: rec[k] for k in ("record_id", "shipment_id", "captured_at", "label")})
        records.append({"record_id": rec["record_id"], "image": image, "note": rec["note"], "sensor": sensor})
    return pd.DataFrame(rows), records


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """Two batches from the default settings (new shipments in the second), embedded once per session."""
    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(params.synth, image_size=IMAGE)
    root = tmp_path_factory.mktemp("shipment_split")
    dev, dev_records = landing_records(generate_batch(root / "landing", "dev", N_DEV, cfg, cfg.seed + 1000))
    new, new_records = landing_records(generate_batch(root / "landing", "new", N_NEW, cfg, cfg.seed + 2000))
    featurizer = Featurizer(dataclasses.replace(params.model, image_size=IMAGE), cache_dir=root / "cache")
    featurizer.embed(dev_records + new_records)
    return Data(params, featurizer, dev, dev_records, new, new_records)


def record_split(n: int, seed: int, test: float, val: float) -> np.ndarray:
    """What the shipment split replaces: records drawn at random, same shares."""
    draw = np.random.default_rng(seed).random(n)
    return np.where(draw < test, "test", np.where(draw < test + val, "val", "train"))


def shipment_split(data: Data, salt: str) -> np.ndarray:
    table = split(data.dev, dataclasses.replace(data.params.split, salt=salt)).set_index("record_id")
    return table.loc[data.dev["record_id"], "split"].to_numpy()


# --------------------------------------------------------------------------- the leak
def test_a_record_split_puts_the_test_parcels_in_training(data: Data) -> None:
    split_cfg = data.params.split
    dev = data.dev.assign(parcel=data.dev["shipment_id"] + "/" + data.dev["label"])
    for kind, parts in (("record", record_split(len(dev), 0, split_cfg.test_fraction, split_cfg.val_fraction)),
                        ("shipment", shipment_split(data, split_cfg.salt))):
        seen = set(dev.loc[parts == "train", "parcel"])
        share = dev.loc[parts == "test", "parcel"].isin(seen).mean()
        print(f"{kind} split: {share:.0%} of test records have their parcel, same label, in training")
        if kind == "record":
            assert share > 0.5
        else:
            assert share == 0


def test_the_frozen_encoder_sees_one_parcel_in_its_photos(data: Data) -> None:
    """Same-shipment photos of one label are nearer each other than other shipments' photos of that label."""
    image, _, present = data.featurizer.embed(data.dev_records)
    has = present[:, 0] > 0
    x = image[has] - image[has].mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    ship, label = data.dev["shipment_id"].to_numpy()[has], data.dev["label"].to_numpy()[has]
    same_label = label[:, None] == label[None, :]
    same_ship = (ship[:, None] == ship[None, :]) & ~np.eye(len(ship), dtype=bool)
    within, across = sim[same_ship & same_label].mean(), sim[~same_ship & same_label].mean()
    print(f"centred cosine of photos: same shipment {within:.3f}, other shipments {across:.3f}")
    assert within > across + 0.08


# --------------------------------------------------------------------------- the gate figure
def gate_and_new(data: Data, parts: np.ndarray) -> tuple[float, float]:
    """Train the fused head on `train` (early stopping on `val`); macro-F1 on `test` and on the new batch."""
    params, labels = data.params, data.dev["label"].tolist()
    tcfg = dataclasses.replace(params.train, epochs=EPOCHS, patience=8, strategy="frozen", nproc=1)
    records = {name: [data.dev_records[i] for i in np.flatnonzero(parts == name)] for name in ("train", "val", "test")}
    truth = {name: [labels[i] for i in np.flatnonzero(parts == name)] for name in ("train", "val", "test")}
    bundle, _ = train_bundle(data.featurizer, records["train"], truth["train"], records["val"], truth["val"],
                             data.featurizer.cfg, tcfg)
    predictor = Predictor(bundle, data.featurizer)

    def score(records: list[dict[str, Any]], truth: list[str]) -> float:
        y = np.array([CLASSES.index(c) for c in truth])
        return macro_f1(y, predictor.probabilities(records).argmax(1), len(CLASSES))

    return score(records["test"], truth["test"]), score(data.new_records, data.new["label"].tolist())


def test_shipment_split_gate_figure_matches_new_shipments(data: Data) -> None:
    split_cfg, figures = data.params.split, {}
    for k in range(SPLITS):
        figures.setdefault("record", []).append(
            gate_and_new(data, record_split(len(data.dev), k, split_cfg.test_fraction, split_cfg.val_fraction)))
        figures.setdefault("shipment", []).append(gate_and_new(data, shipment_split(data, f"{split_cfg.salt}-{k}")))
    mean = {kind: np.mean(v, axis=0) for kind, v in figures.items()}
    for kind, (gate, new) in mean.items():
        print(f"{kind} split: gate-set macro-F1 {gate:.3f}, new shipments {new:.3f}, gate - new {gate - new:+.3f}")
    gate, new = mean["shipment"]
    assert abs(gate - new) <= GATE_TOLERANCE
