"""int8 encoder graphs: made once per cache and named by sha256, embeddings kept apart from fp32's, chosen
on val within the margins, confirmed on the gate set only by an interval, and shipped only as the exact
graphs the model was trained on. One quantisation for the module (a few images): seconds, not a minute."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmcore.bench.serve import random_bundle
from mmcore.config import CLASSES, load_params
from mmcore.features import INT8_KEY, Featurizer
from mmcore.model import ModelBundle
from mmcore.serving.int8 import INT8_DIR, int8_graphs, sha256_file
from mmcore.serving.onnx_encoders import encoder_exports
from mmcore.serving.runtime import OnnxPredictor, resolve_backend
from mmcore.serving.shipping import ShipRefused, prepare
from mmcore.stages import int8_choice
from tests.unit.test_onnx import records

ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def quantised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[bytes]]:
    """(training cache, {encoder: sha256}, the calibration images) after one quantisation."""
    cache = tmp_path_factory.mktemp("cache")
    images = [r["image"] for r in records(8, seed=3) if r["image"] is not None]
    feat = Featurizer(PARAMS.model, cache_dir=cache, backend="onnx")
    return cache, int8_graphs(encoder_exports(feat, cache)[0], images, PARAMS.model.image_size), images


def int8_bundle(path: Path, digests: dict[str, str]) -> Path:
    random_bundle(path, PARAMS.model, seed=4)
    bundle = ModelBundle.load(path)
    bundle.extra = {**bundle.extra, INT8_KEY: digests}
    bundle.save(path)
    return path


def test_graphs_are_cached_by_digest_and_their_embeddings_kept_apart(quantised: tuple) -> None:
    cache, digests, images = quantised
    feat = Featurizer(PARAMS.model, cache_dir=cache, backend="onnx")
    export, _ = encoder_exports(feat, cache)
    files = {e: export / INT8_DIR / f"{d}.onnx" for e, d in digests.items()}
    assert set(digests) == {"image", "text"} and all(sha256_file(f) == digests[e] for e, f in files.items())
    stamps = {e: f.stat().st_mtime_ns for e, f in files.items()}
    assert int8_graphs(export, images, PARAMS.model.image_size) == digests     # once per cache: not re-made
    assert {e: f.stat().st_mtime_ns for e, f in files.items()} == stamps
    both = Featurizer(PARAMS.model, cache_dir=cache, backend="onnx", int8=digests)
    text_only = Featurizer(PARAMS.model, cache_dir=cache, backend="onnx", int8={"text": digests["text"]})
    assert len({both.cache_keys["image"], text_only.cache_keys["image"], feat.cache_keys["image"]}) == 2
    assert text_only.cache_keys["image"] == feat.cache_keys["image"]     # fp32 image embeddings shared
    assert len({both.cache_keys["text"], feat.cache_keys["text"]}) == 2
    assert both.cache_keys["onnx"] == feat.cache_keys["onnx"]           # the same fp32 export underneath
    recs = records(8, seed=6)
    (img8, txt8, _), (img32, txt32, _) = both.embed(recs), feat.embed(recs)
    for a, b in ((img8, img32), (txt8, txt32)):
        assert np.isfinite(a).all() and 0 < np.abs(a - b).max() < 0.5 * np.abs(b).max()
    with pytest.raises(ValueError, match="ONNX Runtime"):
        Featurizer(PARAMS.model, backend="torch", int8=digests)


def test_shipped_graphs_are_those_the_model_was_trained_on(quantised: tuple, tmp_path: Path) -> None:
    cache, digests, images = quantised
    d = int8_bundle(tmp_path / "model", digests)
    runtime = prepare(d, int8_choice.model_int8(d), lambda: images, cache)
    assert runtime["onnx_int8"] == {"image": "int8/image.onnx", "text": "int8/text.onnx"}
    assert {e: sha256_file(d / "onnx" / f) for e, f in runtime["onnx_int8"].items()} == digests
    assert runtime["int8_sha256"] == ModelBundle.load(d).extra[INT8_KEY]
    assert resolve_backend(d, "auto") == "onnx_int8"
    assert runtime["parity"]["backend"] == "onnx_int8" and runtime["parity"]["max_abs"] < 1e-4
    from mmcore.predict import load_model

    recs = records(8, seed=7)    # served (ONNX Runtime) = in process (featurizer + torch head), same graphs
    served = OnnxPredictor(d, "onnx_int8").probabilities(recs)
    assert np.abs(served - load_model(d).probabilities(recs)).max() < 1e-4
    fp32 = OnnxPredictor(d, "onnx_fp32").probabilities(recs)
    assert np.abs(served - fp32).max() > 1e-4                       # the int8 graphs are really in the path


def test_a_digest_the_graphs_do_not_have_refuses_to_ship(quantised: tuple, tmp_path: Path) -> None:
    cache, digests, images = quantised
    d = int8_bundle(tmp_path / "model", {**digests, "image": "0" * 64})
    asked = []

    def training_images() -> list[bytes]:
        asked.append(True)
        return images

    with pytest.raises(ShipRefused, match="0000000000.*refusing to ship"):
        prepare(d, int8_choice.model_int8(d), training_images, cache)
    assert asked == [True]                                          # re-quantised before refusing
    assert not (d / "onnx" / "int8").exists()


def test_val_choice_keeps_fp32_when_int8_is_worse_and_int8_within_the_margins(quantised: tuple,
                                                                             tmp_path: Path) -> None:
    cache, _, images = quantised
    feat = Featurizer(PARAMS.model, cache_dir=cache, backend="onnx")
    head = ModelBundle.load(random_bundle(tmp_path / "head", PARAMS.model, seed=5, routing=False))
    recs = records(8, seed=8)
    val = (recs, [CLASSES[i % len(CLASSES)] for i in range(len(recs))])
    fitted = []

    def fit(name: str, featurizer: Featurizer) -> tuple[ModelBundle, None]:
        fitted.append((name, sorted(featurizer.int8)))
        return dataclasses.replace(head, extra=dict(head.extra)), None

    def params(drop: float, rise: float):
        return dataclasses.replace(PARAMS, serve=dataclasses.replace(PARAMS.serve, max_quantised_drop=drop,
                                                                     max_quantised_brier_rise=rise))

    strict, chosen_feat, (bundle, _) = int8_choice.choose(params(-1.0, 1.0), feat, (head, None), val, images, fit)
    assert not strict["chosen"] and chosen_feat is feat and bundle is head and INT8_KEY not in bundle.extra
    assert [t["encoders"] for t in strict["tried"]] == [["image", "text"], ["text"], ["image"]]
    assert all("max_quantised_drop" in t["why"] for t in strict["tried"])
    assert fitted == [("fused-int8-image+text", ["image", "text"]), ("fused-int8-text", ["text"]),
                      ("fused-int8-image", ["image"])]
    lax, chosen_feat, (bundle, _) = int8_choice.choose(params(1.0, 2.0), feat, (head, None), val, images, fit)
    assert lax["chosen"] and lax["encoders"] == ["image", "text"] and len(lax["tried"]) == 1
    assert bundle.extra[INT8_KEY] == lax["sha256"] == chosen_feat.int8
    off = dataclasses.replace(PARAMS, serve=dataclasses.replace(PARAMS.serve, quantise=False))
    assert int8_choice.choose(off, feat, (head, None), val, images, fit)[0]["reason"] == "serve.quantise is false"


def test_verdict_names_each_margin_it_breaks() -> None:
    fp32 = {"macro_f1": 0.90, "brier": 0.10}
    assert int8_choice.verdict(fp32, {"macro_f1": 0.895, "brier": 0.105}, 0.01, 0.01) == []
    why = int8_choice.verdict(fp32, {"macro_f1": 0.85, "brier": 0.2}, 0.01, 0.01)
    assert len(why) == 2 and "max_quantised_drop" in why[0] and "max_quantised_brier_rise" in why[1]


def test_the_gate_set_vetoes_only_on_an_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASSES), 300)
    shipments = np.repeat(np.arange(100), 3).astype(str)
    right = np.eye(len(CLASSES))[y]
    noisy = right.copy()
    noisy[:3] = np.eye(len(CLASSES))[(y[:3] + 1) % len(CLASSES)]     # a point drop above the margin, 1 shipment
    confirmed = int8_choice.gate_check(y, noisy, right, shipments, 0.005, 200, 0, 0.95)
    assert confirmed["macro_f1_gain"]["observed"] < -0.005 and not confirmed["vetoed"]
    wrong = np.eye(len(CLASSES))[(y + 1) % len(CLASSES)]
    vetoed = int8_choice.gate_check(y, wrong, right, shipments, 0.01, 200, 0, 0.95)
    assert vetoed["vetoed"] and vetoed["macro_f1_gain"]["high"] < -0.01 and "vetoed" in vetoed["reason"]


def test_a_lost_cache_is_requantised_to_the_same_bytes(quantised: tuple, tmp_path: Path) -> None:
    cache, digests, images = quantised
    feat = Featurizer(PARAMS.model, cache_dir=cache, backend="onnx")
    export, _ = encoder_exports(feat, cache)
    shutil.rmtree(export / INT8_DIR)
    d = int8_bundle(tmp_path / "model", digests)
    runtime = prepare(d, digests, lambda: images, cache)
    assert {e: sha256_file(d / "onnx" / f) for e, f in runtime["onnx_int8"].items()} == digests


def test_a_model_directory_carries_its_graphs_to_a_fresh_cache(quantised: tuple, tmp_path: Path) -> None:
    """The registered directory holds the graphs (the train stage carries them), so the pyfunc, evaluate
    and package load it on a machine whose cache never quantised: same bytes, no re-quantising."""
    from mmcore.predict import load_model
    from mmcore.serving.int8 import CARRIED_DIR, carry_graphs

    cache, digests, _ = quantised
    d = int8_bundle(tmp_path / "model", digests)
    carry_graphs(digests, [encoder_exports(Featurizer(PARAMS.model, cache_dir=cache, backend="onnx"), cache)[0]
                           / INT8_DIR], d)
    assert sorted(p.name for p in (d / CARRIED_DIR).iterdir()) == sorted(f"{x}.onnx" for x in digests.values())
    recs = records(6, seed=8)
    fresh = tmp_path / "fresh-cache"
    # no embedding cache on either side: the text encoder's dynamic int8 scales activations per batch, so an
    # embedding cached from another batch differs by ~1e-3 (the served parity check compares equal batches)
    here = load_model(d, onnx_cache=cache).probabilities(recs)
    assert np.abs(load_model(d, onnx_cache=fresh).probabilities(recs) - here).max() < 1e-6

    def no_requantising() -> list[bytes]:
        raise AssertionError("the carried graphs should have been shipped")

    runtime = prepare(d, digests, no_requantising, fresh)
    assert {e: sha256_file(d / "onnx" / f) for e, f in runtime["onnx_int8"].items()} == digests
    assert not (d / CARRIED_DIR).exists()       # shipped once, as onnx/int8/
