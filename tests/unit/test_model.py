"""Model contract: shapes, missing modalities, save/load without pickle, and that training learns."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore.config import ModelConfig, TrainConfig
from mmcore.encoders import IMAGE_DIM, TEXT_DIM
from mmcore.model import Batch, FusionModel, ModelBundle
from mmcore.fit import fit, predict_logits

MCFG = ModelConfig(sensor_length=32, width=16, hidden=32, text_ngram_buckets=8)
TCFG = TrainConfig(seed=0, epochs=30, batch_size=16, lr=5e-3, weight_decay=0.0, embed_batch_size=8, patience=30)


def random_batch(n: int, seed: int = 0, mask: torch.Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, IMAGE_DIM, generator=g), torch.randn(n, TEXT_DIM, generator=g),
                 torch.randn(n, 4, MCFG.sensor_length, generator=g),
                 torch.ones(n, 3) if mask is None else mask, torch.rand(n, MCFG.text_ngram_buckets, generator=g))


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
@pytest.mark.parametrize("mask", [[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
def test_forward_shape_for_any_modality_subset(mask: list[int], fusion: str) -> None:
    model = FusionModel(dataclasses.replace(MCFG, fusion=fusion)).eval()
    out = model(random_batch(4, mask=torch.tensor([mask] * 4, dtype=torch.float32)))
    assert out.shape == (4, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_missing_modality_ignores_its_input(fusion: str) -> None:
    model = FusionModel(dataclasses.replace(MCFG, fusion=fusion)).eval()
    a = random_batch(3, seed=1, mask=torch.tensor([[1.0, 0.0, 1.0]] * 3))
    b = dataclasses.replace(a, text=torch.randn(3, TEXT_DIM), ngrams=torch.rand(3, MCFG.text_ngram_buckets))
    assert torch.allclose(model(a), model(b))


def test_unimodal_model_only_sees_its_modality() -> None:
    model = FusionModel(dataclasses.replace(MCFG, modalities=("sensor",))).eval()
    a = random_batch(3, seed=2)
    b = dataclasses.replace(a, image=torch.randn(3, IMAGE_DIM), text=torch.randn(3, TEXT_DIM))
    assert torch.allclose(model(a), model(b))
    c = dataclasses.replace(a, sensor=torch.randn(3, 4, MCFG.sensor_length))
    assert not torch.allclose(model(a), model(c))


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_without_each_equals_masking_each_modality(fusion: str) -> None:
    """The one-pass leave-one-out logits (abstention's disagreement) equal three masked forward passes,
    and a unimodal model skips the other projections in eval mode without changing its answer."""
    from mmcore.evaluate import mask_modality
    from mmcore.model import MODALITIES

    model = FusionModel(dataclasses.replace(MCFG, fusion=fusion)).eval()
    batch = random_batch(5, seed=5, mask=torch.tensor([[1.0, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1]]))
    with torch.no_grad():
        each = model.without_each(batch)
        for j, m in enumerate(MODALITIES):
            assert torch.allclose(each[j], model(mask_modality(batch, m)), atol=1e-6)
    uni = FusionModel(dataclasses.replace(MCFG, fusion=fusion, modalities=("text",))).eval()
    projects_all = copy.deepcopy(uni)              # same weights and mask, every modality projected
    projects_all.cfg = dataclasses.replace(uni.cfg, modalities=MODALITIES)
    with torch.no_grad():
        assert torch.allclose(uni(batch), projects_all(batch), atol=1e-6)


def test_training_learns_a_separable_signal() -> None:
    text_only = torch.tensor([0.0, 1.0, 0.0])
    train = random_batch(120, seed=3, mask=text_only.repeat(120, 1))
    val = random_batch(60, seed=4, mask=text_only.repeat(60, 1))
    # the class is written into the text embedding: any working learner picks it up
    y, yv = torch.arange(120) % 5, torch.arange(60) % 5
    train.text.mul_(0.05)[:, :5] += torch.nn.functional.one_hot(y, 5)
    val.text.mul_(0.05)[:, :5] += torch.nn.functional.one_hot(yv, 5)
    model, hist = fit(train, y, val, yv, dataclasses.replace(MCFG, modality_dropout=0.0), TCFG)
    assert hist.train_loss[-1] < hist.train_loss[0] * 0.6
    assert hist.best_val_macro_f1 > 0.9
    acc = (predict_logits(model, val).argmax(1) == yv).float().mean().item()
    assert acc > 0.9


def test_save_load_roundtrip_is_exact_and_pickle_free(tmp_path: Path) -> None:
    model = FusionModel(MCFG).eval()
    bundle = ModelBundle(model, ["normal", "damaged", "wet", "temperature_excursion", "tampered"],
                         np.zeros(4, np.float32), np.ones(4, np.float32), {"image": "x", "text": "y"})
    bundle.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.safetensors"]
    loaded = ModelBundle.load(tmp_path / "m")
    batch = random_batch(5, seed=5)
    assert torch.equal(model(batch), loaded.model(batch))
    assert loaded.model.cfg == model.cfg and loaded.encoders == bundle.encoders
