"""The embedding cache never mixes embeddings made differently: code, weights and dtype are in its key."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmcore import preprocess
from mmcore.config import ModelConfig
from mmcore.features import Featurizer, files_fingerprint
from tests.conftest import jpeg_bytes

CFG = ModelConfig(image_size=32, text_ngram_buckets=0)
RECORDS = [{"image": jpeg_bytes(48, (150, 120, 80)), "note": "corner crushed", "sensor": None}]


def test_a_preprocessing_constant_edit_misses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Featurizer(CFG, cache_dir=tmp_path, device="cpu")
    img, txt, _ = first.embed(RECORDS)
    assert first.embedded == {"image": 1, "text": 1}
    again = Featurizer(CFG, cache_dir=tmp_path, device="cpu")
    again_img, _, _ = again.embed(RECORDS)
    assert again.embedded == {"image": 0, "text": 0} and np.array_equal(again_img, img)     # a hit

    monkeypatch.setattr(preprocess, "IMAGE_MEAN", 0.45)                                     # the edit
    edited = Featurizer(CFG, cache_dir=tmp_path, device="cpu")
    assert edited.cache_keys["image"] != first.cache_keys["image"]
    assert edited.versions() == first.versions()            # what a saved model records is unchanged
    new_img, _, _ = edited.embed(RECORDS)
    assert edited.embedded == {"image": 1, "text": 1}       # a miss: embedded again under the new key
    assert not np.allclose(new_img, img)
    folders = {p.name for p in tmp_path.iterdir()}         # old and new side by side, never in one folder
    assert {first.cache_keys["image"], edited.cache_keys["image"]} <= folders


def test_the_key_holds_the_weights_and_the_dtype(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 100)
    before = files_fingerprint([weights])
    weights.write_bytes(b"b" * 100)
    assert files_fingerprint([weights]) != before
    cpu, gpu = Featurizer(CFG, device="cpu"), Featurizer(CFG, device="cuda")    # built, not run: no GPU needed
    assert (cpu.dtype, gpu.dtype) == ("fp32", "bf16")
    assert cpu.cache_keys["image"] != gpu.cache_keys["image"] and cpu.cache_keys["text"] != gpu.cache_keys["text"]
