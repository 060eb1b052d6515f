"""Fine-tuning strategies, the decoded-image and embedding caches, and fine-tuned models that
load and predict like frozen ones."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

import mmcore
from mmcore.config import CLASSES, ModelConfig, TrainConfig
from mmcore.features import Featurizer
from mmcore.finetune import EncoderStack, FinetuneModel, apply_strategy, build_model, split_trained
from mmcore.train import train_bundle
from tests.conftest import jpeg_bytes

MCFG = ModelConfig(image_size=32, text_max_tokens=16, sensor_length=32, width=16, hidden=32)
TCFG = TrainConfig(seed=0, epochs=2, batch_size=8, lr=5e-3, weight_decay=0.0, embed_batch_size=8, patience=5,
                   encoder_lr=1e-3, unfreeze_top_k=1, lora_rank=4)
NOTES = ["box crushed at the corner", "carton soaked, water stains", "seal broken, tape cut", "logger hot", ""]


def records(n: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    rng = np.random.default_rng(seed)
    recs, labels = [], []
    for i in range(n):
        c = i % len(CLASSES)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        t = np.arange(40) * 60.0
        recs.append({"image": jpeg_bytes(40, colour) if i % 7 else None, "note": NOTES[c],
                     "sensor": {"t_s": t.tolist(), "temperature_c": (4 + c + rng.normal(0, 0.1, 40)).tolist(),
                                "humidity_pct": [50.0] * 40, "shock_g": [0.2] * 40, "light_lux": [0.0] * 40}})
        labels.append(CLASSES[c])
    return recs, labels


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_top_k_unfreezes_only_the_last_blocks() -> None:
    stack = apply_strategy(EncoderStack(16), dataclasses.replace(TCFG, strategy="top_k", unfreeze_top_k=1))
    names = trainable(stack)
    last_block = len(stack.image.net._blocks) - 1
    assert any(n.startswith(f"image.net._blocks.{last_block}.") for n in names)
    assert not any(n.startswith("image.net._blocks.0.") for n in names)
    assert any(n.startswith("text.net.encoder.layer.5.") for n in names)
    assert not any(n.startswith("text.net.encoder.layer.0.") or "embeddings" in n for n in names)


def test_full_trains_everything_and_lora_only_adapters() -> None:
    full = apply_strategy(EncoderStack(16), dataclasses.replace(TCFG, strategy="full"))
    assert trainable(full) == {n for n, _ in full.named_parameters()}
    lora = apply_strategy(EncoderStack(16), dataclasses.replace(TCFG, strategy="lora"))
    names = trainable(lora)
    assert names and all("lora_" in n for n in names)
    n_train = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert n_train < 0.02 * sum(p.numel() for p in lora.parameters())


def test_fine_tuned_bundle_saves_loads_and_predicts_the_same(tmp_path: Path) -> None:
    """Train a few steps with encoders in the loop; the saved model (LoRA merged, safetensors)
    predicts through the ordinary featurizer what the training-time model computed."""
    torch.set_num_threads(2)
    recs, labels = records(20)
    tcfg = dataclasses.replace(TCFG, strategy="top_k")
    feat = Featurizer(MCFG, cache_dir=tmp_path / "cache")
    bundle, hist = train_bundle(feat, recs, labels, recs[:10], labels[:10], MCFG, tcfg)
    assert len(hist.epoch) == 2 and bundle.encoder_state is not None
    assert not any("lora_" in k for k in bundle.encoder_state)
    assert bundle.encoders["image"].endswith(bundle.encoders["text"][-16:])  # both carry the weights tag
    assert "+ft-" in bundle.encoders["image"]

    bundle.save(tmp_path / "model")
    pretrained = EncoderStack(16).state_dict()
    changed = [k for k, v in bundle.encoder_state.items() if not torch.equal(v, pretrained[k])]
    assert changed, "fine-tuning must change encoder weights"

    predictor = mmcore.load_model(tmp_path / "model")          # the public API: safetensors + JSON
    probs = predictor.probabilities(recs[:6])
    # the same records through the training-time path: pixels and token ids into head + encoders
    head = FinetuneModel(bundle.model, _stack_with(bundle.encoder_state)).eval()
    with torch.inference_mode():
        ref = torch.softmax(head(feat.raw_batch(recs[:6], bundle.sensor_mean, bundle.sensor_std)), -1)
    np.testing.assert_allclose(probs, ref.numpy(), atol=1e-4)


def test_lora_adapters_merge_into_plain_weights() -> None:
    """What a LoRA-trained model computes is what its merged, peft-free weights compute."""
    tcfg = dataclasses.replace(TCFG, strategy="lora")
    model = build_model(MCFG, tcfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)          # adapters start at zero: make them matter
    recs, _ = records(5)
    tokens = torch.from_numpy(Featurizer(MCFG).tokens(recs))
    pixels = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    with torch.inference_mode():
        before = model.eval().encoders(pixels, tokens)[1]
    head, state = split_trained(model)
    assert state is not None and not any("lora" in k for k in state)
    with torch.inference_mode():
        after = _stack_with(state).eval()(pixels, tokens)[1]
        pretrained = EncoderStack(16).eval()(pixels, tokens)[1]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after, pretrained, atol=1e-3)


def _stack_with(state: dict[str, torch.Tensor]) -> EncoderStack:
    stack = EncoderStack(16)
    stack.load_state_dict(state)
    return stack


def test_frozen_strategy_builds_the_bare_head_and_keeps_pretrained_versions(tmp_path: Path) -> None:
    model = build_model(MCFG, TCFG)
    assert not isinstance(model, FinetuneModel)
    head, state = split_trained(model)
    assert head is model and state is None
    assert "+ft-" not in Featurizer(MCFG).versions()["image"]


def test_images_are_decoded_once_per_content(tmp_path: Path) -> None:
    recs, _ = records(14)
    n_images = sum(r["image"] is not None for r in recs)
    feat = Featurizer(MCFG, cache_dir=tmp_path)
    first = feat.pixels(recs)
    second = feat.pixels(recs)                                   # a second epoch
    assert feat.decoded == n_images and np.array_equal(first, second)
    assert first.dtype == np.uint8 and first.shape == (14, 3, 32, 32)

    again = Featurizer(MCFG, cache_dir=tmp_path)                 # a retrain: new process, same cache
    new = {"image": jpeg_bytes(40, (1, 2, 3)), "note": "x", "sensor": None}
    np.testing.assert_array_equal(again.pixels(recs + [new])[:14], first)
    assert again.decoded == 1


def test_retrain_embeds_only_new_records(tmp_path: Path) -> None:
    recs, _ = records(10)
    feat = Featurizer(MCFG, cache_dir=tmp_path)
    feat.embed(recs)
    unique_images = len({r["image"] for r in recs if r["image"] is not None})
    unique_notes = len({r["note"] for r in recs if r["note"]})
    assert feat.embedded == {"image": unique_images, "text": unique_notes}

    later = Featurizer(MCFG, cache_dir=tmp_path)
    new = [{"image": jpeg_bytes(40, (9, 9, 9)), "note": "a brand new note", "sensor": None}]
    img, txt, present = later.embed(recs + new)
    assert later.embedded == {"image": 1, "text": 1}
    assert present.sum() == sum(r["image"] is not None for r in recs) + sum(bool(r["note"]) for r in recs) + 2
