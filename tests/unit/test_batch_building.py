"""Building a training Batch: the sensor traces a caller already resampled give the batch it would
have built itself, and moving or slicing a Batch copies no more than it must (mmcore/fit.py slices
the training set for every optimiser step)."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcore.config import SENSOR_CHANNELS, ModelConfig
from mmcore.features import Featurizer, sensor_stats
from mmcore.fit import predict_logits, subset
from mmcore.model import Batch, FusionModel

FEAT = Featurizer(ModelConfig(sensor_length=16))     # records below have no image or note: no encoder loads

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
trace = st.integers(1, 40).flatmap(lambda n: st.fixed_dictionaries(
    {"t_s": st.just([float(i) for i in range(n)]), **{c: st.lists(finite, min_size=n, max_size=n)
                                                       for c in SENSOR_CHANNELS}}))
records = st.lists(st.fixed_dictionaries({"image": st.none(), "note": st.none(), "sensor": st.none() | trace}),
                   min_size=1, max_size=6)


@settings(max_examples=30, deadline=None)
@given(train=records, other=records)
def test_batch_from_given_sensors_equals_batch_built_alone(train: list[dict], other: list[dict]) -> None:
    sensors = FEAT.sensors(train)
    mean, std = sensor_stats(*sensors)
    given_, alone = FEAT.batch(train, mean, std, sensors), FEAT.batch(train, mean, std)
    for a, b in zip(given_.tensors(), alone.tensors()):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # the statistics of one split applied to another split's records, as val is built
    assert all(torch.equal(a, b) for a, b in zip(FEAT.batch(other, mean, std, FEAT.sensors(other)).tensors(),
                                                  FEAT.batch(other, mean, std).tensors()))


def small_batch(n: int = 8) -> Batch:
    cfg = ModelConfig(sensor_length=16)
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(n, 1280, generator=g), torch.randn(n, 384, generator=g),
                 torch.randn(n, 4, cfg.sensor_length, generator=g), torch.ones(n, 3),
                 torch.randn(n, cfg.text_ngram_buckets, generator=g))


def test_batch_to_its_own_device_and_slices_share_memory() -> None:
    batch = small_batch()
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(batch.to("cpu").tensors(), batch.tensors()))
    view = subset(batch, slice(2, 5))
    assert all(v.data_ptr() == t[2:].data_ptr() for v, t in zip(view.tensors(), batch.tensors()))
    picked = subset(batch, torch.tensor([4, 1]))
    assert all(torch.equal(p, t[[4, 1]]) for p, t in zip(picked.tensors(), batch.tensors()))


def test_predict_logits_in_chunks_equals_one_pass() -> None:
    model = FusionModel(ModelConfig(sensor_length=16)).eval()
    batch = small_batch(11)
    torch.testing.assert_close(predict_logits(model, batch, chunk=4), predict_logits(model, batch, chunk=512))
