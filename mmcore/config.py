"""Typed views of `params.yaml`: one frozen pydantic dataclass per section, checked on load.

Every key is checked when params.yaml loads, and `--set` overrides go through the same check: an
unknown key (with the closest known one), a missing one, or a value of the wrong type fails at once
naming the key's path (`train.epochs`) and what it expects, so a typo never silently falls back to a
default and `epochs: "60"` never reaches training as text. Types are strict (a string is never a
number, nor a number a flag); YAML 1.1's `1e-4`, which plain PyYAML reads as text, is read as the
number it means (`load_yaml`), as DVC's YAML 1.2 reader does. Each class's `__post_init__` runs
inside pydantic's validation, after the types: its range and cross-field checks fail the same way.

Pydantic dataclasses, not BaseModel: `dataclasses.replace` re-validates (BaseModel's `model_copy`
does not), `dataclasses.asdict`/`fields` keep working for callers and the docs generator, and a
section may be named `validate`, which BaseModel reserves.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
from dataclasses import field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass

CLASSES: tuple[str, ...] = ("normal", "damaged", "wet", "temperature_excursion", "tampered")
SENSOR_CHANNELS: tuple[str, ...] = ("temperature_c", "humidity_pct", "shock_g", "light_lux")
# The smallest photo the landing contract takes, in pixels a side (DESIGN §2): params.yaml
# `ingest.image_min_side` sets it for ingest (smaller photos are quarantined, image_too_small) and
# validation (which then expects none); the bento has no params.yaml, so the service refuses
# smaller photos by this default (tests/unit/test_preprocess.py checks the two agree).
IMAGE_MIN_SIDE = 32


SHIFT_SENSOR_OFFSET: dict[str, tuple[float, float]] = {   # calibration offset bounds per channel
    "temperature_c": (-10.0, 10.0), "humidity_pct": (-25.0, 25.0), "shock_g": (0.0, 1.0), "light_lux": (0.0, 50.0)}
SHIFT_SENSOR_GAIN = dict.fromkeys(SENSOR_CHANNELS, (0.5, 2.0))
SHIFT_SENSOR_NOISE = {"temperature_c": (0.0, 2.0), "humidity_pct": (0.0, 5.0), "shock_g": (0.0, 0.5),
                      "light_lux": (0.0, 5.0)}

# Every section: an unknown key is an error, and no value is converted from another type
# (`"60"` is not 60, `1` is not true); only a whole number may stand for a number.
STRICT = ConfigDict(extra="forbid", strict=True)


def _as_tuple(cls: type, value: Any) -> Any:
    """A list (what YAML, JSON and most callers give) for a tuple field: tuples keep configs hashable."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, config=STRICT)
class ShiftConfig:
    """A new hub with its own camera, note style and tracker (mmcore/synth/shift.py).

    Every knob defaults to its neutral value, and a neutral knob leaves the generator's
    output byte-identical: with `hub` null or `share` 0 nothing changes at all.
    """

    hub: str | None = None              # the new hub's code (not one of synth.hubs)
    share: float = 0.0                  # share of a batch's records captured there
    exposure: float = 1.0               # camera: brightness gain
    colour_gains: tuple[float, ...] = (1.0, 1.0, 1.0)   # camera: R, G, B gains (a colour cast)
    blur_px: float = 0.0                # camera: Gaussian blur radius in output pixels
    camera_noise: float = 0.0           # camera: extra sensor noise, std in grey levels
    image_width: int = 0                # camera: output size; 0 and 0 = synth.image_size square
    image_height: int = 0           # camera: output height, set together with image_width
    jpeg_quality: int = 90              # camera: the generator's default is 90
    note_shorthand: float = 0.0         # notes: chance that a word with a hub shorthand form is shortened
    note_typo_rate: float = 0.0         # notes: chance of a typo per English word
    note_upper: float = 0.0             # notes: chance a note is typed in capitals
    note_p_chinese: float | None = None  # notes: the hub's share of Chinese notes; null = synth.p_chinese
    sensor_period_s: int = 60           # tracker: sampling period (the generator's is 60 s)
    sensor_offset: dict[str, float] = field(default_factory=dict)  # tracker: calibration offset per channel
    sensor_gain: dict[str, float] = field(default_factory=dict)    # tracker: calibration gain per channel
    sensor_noise: dict[str, float] = field(default_factory=dict)   # tracker: extra noise std per channel
    _tuples = field_validator("colour_gains", mode="before")(_as_tuple)

    def __post_init__(self) -> None:
        problems = _shift_problems(self)
        if problems:
            raise ValueError("synth.shift: " + "; ".join(problems))

    @property
    def active(self) -> bool:
        """Whether any record is shifted: a hub is named and a share of records goes there."""
        return self.hub is not None and self.share > 0


def _shift_problems(s: ShiftConfig) -> list[str]:
    """Every out-of-range knob, with its allowed range (bounds keep traces and photos inside the contract)."""
    def outside(name: str, value: float, lo: float, hi: float) -> str | None:
        return None if lo <= value <= hi else f"{name} = {value} is outside [{lo}, {hi}]"

    checks = [outside("share", s.share, 0, 1), outside("exposure", s.exposure, 0.3, 3),
              outside("blur_px", s.blur_px, 0, 8), outside("camera_noise", s.camera_noise, 0, 40),
              outside("jpeg_quality", s.jpeg_quality, 10, 100), outside("note_shorthand", s.note_shorthand, 0, 1),
              outside("note_typo_rate", s.note_typo_rate, 0, 0.5), outside("note_upper", s.note_upper, 0, 1),
              outside("sensor_period_s", s.sensor_period_s, 8, 120)]
    checks += [outside(f"colour_gains[{i}]", g, 0.5, 1.5) for i, g in enumerate(s.colour_gains)]
    if s.note_p_chinese is not None:
        checks.append(outside("note_p_chinese", s.note_p_chinese, 0, 1))
    if len(s.colour_gains) != 3:
        checks.append(f"colour_gains needs 3 values (R, G, B), got {len(s.colour_gains)}")
    if (s.image_width == 0) != (s.image_height == 0):
        checks.append("image_width and image_height are set together (0 and 0: synth.image_size)")
    elif s.image_width:
        checks += [outside("image_width", s.image_width, IMAGE_MIN_SIDE, 4096),
                   outside("image_height", s.image_height, IMAGE_MIN_SIDE, 4096)]
    if s.hub is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", s.hub):
        checks.append(f"hub {s.hub!r} must be 1-32 characters of [A-Za-z0-9_-]")
    if s.share > 0 and s.hub is None:
        checks.append(f"share = {s.share} needs a hub")
    for name, limits in (("sensor_offset", SHIFT_SENSOR_OFFSET), ("sensor_gain", SHIFT_SENSOR_GAIN),
                         ("sensor_noise", SHIFT_SENSOR_NOISE)):
        for channel, value in getattr(s, name).items():
            checks.append(outside(f"{name}.{channel}", value, *limits[channel]) if channel in limits else
                          f"{name}: unknown channel {channel!r}; channels: {', '.join(SENSOR_CHANNELS)}")
    return [c for c in checks if c]


@dataclass(frozen=True, config=STRICT)
class SynthConfig:
    """The synthetic generator (mmcore/synth/, `python -m mmcore.synth`): `make run`'s default data."""

    seed: int                       # batch i is generated from seed + i
    batches: int                    # landing batches `make run` generates into an empty landing area
    records_per_batch: int          # records in each generated batch
    image_size: int                 # generated photos are this many px a side
    label_noise: float              # share of records given a wrong label on purpose
    unlabelled_share: float         # share of records landed with label null
    class_mix: dict[str, float]     # share of each class among the records (the shares sum to 1)
    p_image_missing: float          # share of records without a photo
    p_note_missing: float           # share of records without a note (null)
    p_note_empty: float             # share of records with an empty note
    p_sensor_missing: float         # share of records without a sensor trace
    p_chinese: float                # share of notes written in Chinese
    p_image_evidence: float         # chance a parcel's photos show its condition (per parcel)
    p_note_evidence: float          # chance a record's note carries evidence of its condition
    p_sensor_evidence: float        # chance a record's trace carries evidence of its condition
    hubs: list[str]                 # hub codes the generated shipments pass through
    p_onset_first_hub: float = 0.7   # a shipment's class shows from its first hub; else from a later one
    shift: ShiftConfig = field(default_factory=ShiftConfig)  # a new hub's traffic (off by default)

    def __post_init__(self) -> None:
        if self.shift.hub is not None and self.shift.hub in self.hubs:
            raise ValueError(f"synth.shift.hub {self.shift.hub!r} is one of synth.hubs: a shift is a new hub")


def _aware(value: Any) -> datetime | None:
    """An ISO 8601 time with a timezone, or None when it is not one."""
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.utcoffset() is not None else None


@dataclass(frozen=True, config=STRICT)
class IngestConfig:
    """The ingest stage (mmcore/data/ingest.py): landing batches into data/raw, or quarantined with a reason."""

    max_bad_share: float  # a batch with a larger share of quarantined records is held back whole (batch_rejected)
    min_sensor_rows: int            # a trace with fewer rows is quarantined (bad_sensor)
    max_sensor_rows: int            # a trace with more rows is quarantined (bad_sensor)
    max_note_chars: int             # a longer note is quarantined (bad_note)
    max_image_bytes: int            # a larger photo file is quarantined (image_too_large)
    max_image_pixels: int           # a photo with more pixels is quarantined (image_too_large)
    shard_size: int                 # accepted records per Parquet shard of data/raw
    image_min_side: int = IMAGE_MIN_SIDE  # px a side: smaller photos are quarantined; validation and the service use it
    landing: str = "data/landing"     # landing area the ingest stage reads (dvc.yaml: ${ingest.landing})
    labels: str = "data/labels"       # label feed the ingest stage joins (dvc.yaml: ${ingest.labels}; DESIGN §2b)
    executor: str = "process"         # process: a local process pool; dask: a Dask cluster (dask_address)
    dask_address: str = ""            # dask scheduler address; "" starts a local cluster for the run
    max_line_bytes: int = 1048576     # a longer line of records.jsonl or labels.jsonl is not parsed (line_too_long)
    max_json_depth: int = 16          # a line nested deeper (brackets) is quarantined before json parses it (too_deep)
    max_sensor_bytes: int = 4194304   # a larger sensor file is quarantined on its size, never read (sensor_too_large)
    earliest_timestamp: str = "2000-01-01T00:00:00+00:00"  # captured_at / labelled_at before it: timestamp_out_of_range
    max_future_skew_hours: float = 24.0  # captured_at / labelled_at after now + this many hours: timestamp_out_of_range

    def __post_init__(self) -> None:
        if self.executor not in ("process", "dask"):
            raise ValueError(f"ingest.executor must be process or dask, got {self.executor!r}")
        for name in ("image_min_side", "max_line_bytes", "max_json_depth", "max_sensor_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ingest.{name} must be at least 1, got {getattr(self, name)!r}")
        earliest = _aware(self.earliest_timestamp)
        if earliest is None:
            raise ValueError("ingest.earliest_timestamp must be ISO 8601 with a timezone, "
                             f"got {self.earliest_timestamp!r}")
        if not self.max_future_skew_hours >= 0:
            raise ValueError(f"ingest.max_future_skew_hours must be >= 0, got {self.max_future_skew_hours!r}")


@dataclass(frozen=True, config=STRICT)
class ValidateConfig:
    """The validate stage (mmcore/stages/validate.py, mmcore/expectations.py): the suite's limits, drift thresholds."""

    min_rows: int                   # the profile table needs at least this many rows
    max_missing_share: float        # largest share of records missing a modality, per modality
    min_class_share: float          # smallest share of each class among the rows
    brightness_range: list[float]   # [low, high] of a photo's mean brightness (0-255)
    sensor_temperature_range: list[float]  # [low, high] °C: a reading outside is a unit or firmware bug
    sensor_humidity_range: list[float]  # [low, high] % relative humidity
    sensor_shock_range: list[float]  # [low, high] g of a trace's largest shock
    sensor_light_range: list[float]  # [low, high] lux of a trace's brightest reading
    drift_psi_warn: float        # PSI vs the champion's training data at which a column warns
    drift_psi_fail: float        # PSI at which a column counts as drift "fail"
    drift_fail_is_hard: bool     # true: a drift fail stops the pipeline; false: it only warns


@dataclass(frozen=True, config=STRICT)
class SplitConfig:
    """The split (mmcore/data/split.py): by a salted hash of shipment_id; `test` is the gate set."""

    val_fraction: float             # share of shipments in val (early stopping and every choice)
    test_fraction: float  # share of shipments in test, the gate set (a change moves records: the gate refuses)
    salt: str                       # salt of the shipment hash (a change reshuffles the splits: the gate refuses)
    calib_fraction: float = 0.15    # calibrates abstention (mmcore.selective); carved from what was train


@dataclass(frozen=True, config=STRICT)
class SelectiveConfig:
    """When the model decides alone (mmcore/selective): calibrated on the calib split at each retrain."""

    alpha: float = 0.1                  # prediction sets miss the true class at most this often
    min_auto_precision: float = 0.94    # automatic decisions agree with the observed label at least this often
    delta: float = 0.1                  # with confidence 1 - delta (Learn then Test)
    label_noise: float = 0.03           # share of observed labels assumed wrong: observed precision <= 1 - this
    per_class_min_records: int = 1000   # calib records (threshold part) every class needs for per-class targets
    scaling_split: str = "val"          # where the temperature is fitted: val (all calib then certifies) | calib
    scaling_share: float = 0.5          # scaling_split calib: share of calib shipments fitting the temperature
    detector: str = "leave_one_out"     # modality disagreement: leave_one_out | pairwise (`mmcore.selective.sweep`)
    max_clean_flag_rate: float = 0.05   # modality disagreement: share of clean records it may send to review
    coverage_slack: float = 0.02        # gate: gate-set coverage >= 1 - alpha - coverage_slack
    max_automation_drop: float = 0.05   # gate: the challenger automates at most this much less than the champion
    contradiction_seed: int = 0         # evaluate: which records lend a note or trace to the synthetic contradictions

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1 and 0 < self.delta < 1 and 0 < self.min_auto_precision < 1):
            raise ValueError("selective.alpha, delta and min_auto_precision must lie strictly between 0 and 1")
        if not (0 <= self.label_noise < 1 and 0 <= self.scaling_share < 1):
            raise ValueError("selective.label_noise and scaling_share must lie in [0, 1)")
        if self.scaling_split not in ("val", "calib"):
            raise ValueError(f"selective.scaling_split: {self.scaling_split!r}; allowed: val, calib")
        if self.detector not in ("leave_one_out", "pairwise"):
            raise ValueError(f"selective.detector: {self.detector!r}; allowed: leave_one_out, pairwise")


@dataclass(frozen=True, config=STRICT)
class ModelConfig:
    """The architecture (mmcore/model.py): saved with every checkpoint, so serving never reads params.yaml."""

    image_size: int = 160           # photos are resized to this many px a side for the image encoder
    text_max_tokens: int = 48       # notes are truncated to this many tokens
    sensor_length: int = 128        # traces are resampled to this many steps
    width: int = 128                # width of each modality token
    hidden: int = 256               # hidden units of the classification head
    dropout: float = 0.2            # dropout of the head (and of the attention fusion)
    modality_dropout: float = 0.25  # training: chance each present modality is hidden (never all of a record's)
    fusion: str = "concat"          # concat | gated | attention
    text_ngram_buckets: int = 0     # hashed character 1-2-gram counts next to MiniLM (0: MiniLM only)
    modalities: tuple[str, ...] = ("image", "text", "sensor")  # inputs it may see (one alone: a unimodal baseline)
    _tuples = field_validator("modalities", mode="before")(_as_tuple)

    def __post_init__(self) -> None:
        if self.fusion not in ("concat", "gated", "attention"):
            raise ValueError(f"model.fusion must be concat, gated or attention, got {self.fusion!r}")


STRATEGIES = ("frozen", "top_k", "full", "lora")


@dataclass(frozen=True, config=STRICT)
class TrainConfig:
    """The train stage (mmcore/train.py, mmcore/finetune.py): optimiser, schedule, what of the encoders trains."""

    seed: int                       # seeds weights, data order and dropout (under DDP: seed + rank)
    epochs: int                     # most epochs (early stopping may end sooner)
    batch_size: int                 # records per batch
    lr: float                       # AdamW learning rate of the fusion head (linear warmup, then cosine decay)
    weight_decay: float             # AdamW weight decay
    embed_batch_size: int           # records per batch when the frozen encoders fill the embedding cache
    patience: int                   # early stopping: epochs without a better validation macro-F1
    accumulate: int = 1               # gradient accumulation steps
    contrastive_weight: float = 0.0   # CLIP-style image-text InfoNCE added to the loss
    contrastive_temperature: float = 0.07  # temperature of that InfoNCE loss
    strategy: str = "frozen"          # frozen | top_k | full | lora: what of the pretrained encoders trains
    unfreeze_top_k: int = 2           # top_k: the last k blocks of each encoder train
    encoder_lr: float = 1e-4          # encoders (top_k, full, lora) learn slower than the fusion head
    lora_rank: int = 8              # lora: rank of the adapters on MiniLM's query and value
    nproc: int = 1                    # >1: torchrun DistributedDataParallel with this many processes
    embed_backend: str = "onnx"       # onnx | torch: what computes the frozen encoders' embeddings on CPU

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.nproc < 1:
            raise ValueError(f"train.nproc must be at least 1, got {self.nproc}")
        if self.embed_backend not in ("onnx", "torch"):
            raise ValueError(f"train.embed_backend must be onnx or torch, got {self.embed_backend!r}")


@dataclass(frozen=True, config=STRICT)
class EvaluateConfig:
    """The evaluate stage (mmcore/evaluate.py): challenger and champion scored on the same gate set."""

    n_boot: int                 # paired bootstrap rounds for the challenger-minus-champion macro-F1 interval
    ci: float                   # its confidence level (0.95: the 2.5th..97.5th percentile)
    seed: int                   # seeds the bootstrap's numpy Generator
    ece_bins: int               # equal-width confidence bins of the ECE and the reliability diagram
    latency_records: int        # gate-set records timed one at a time (batch 1, full path, CPU)
    latency_warmup: int         # untimed calls first
    latency_repeats: int        # each record counts with its best of this many calls (damps a busy machine's noise)
    behaviour_records: int = 100  # gate-set records the invariance and directional suites perturb (mmcore.behaviour)
    # quality targets checked in reports/ablation.json (reported, not gated: the gate has its own floors)
    target_macro_f1: float = 0.90   # target: fused macro-F1 on the gate set
    target_margin_over_unimodal: float = 0.10  # target: fused minus the best unimodal model's macro-F1
    target_max_modality_drop: float = 0.10  # target: largest macro-F1 drop with one modality masked at test time


@dataclass(frozen=True, config=STRICT)
class GateConfig:
    """The gate's rules (mmcore/gate.py): floors for every challenger, comparisons against the champion."""

    min_macro_f1: float         # floor: macro-F1 on the gate set (floors apply to every challenger, the first included)
    min_accuracy: float             # floor: accuracy on the gate set
    min_class_f1: float         # floor: the worst class's F1
    max_ece: float                  # floor: expected calibration error at most this
    max_latency_p95_ms: float   # budget: p95 latency in ms (CPU, batch 1, encoders included)
    max_class_f1_drop: float    # no class F1 may fall by more than this vs the champion (simultaneous band)
    max_slice_f1_drop: float    # no slice's macro-F1 (hub, note language, missing modality) may fall by more
    min_slice_shipments: int = 30   # slices of fewer shipments are reported in gate.json, not gated
    max_behaviour_regression: float = 0.05  # no behavioural suite's failure rate may exceed the champion's by more
    noninferiority_margin: float = 0.01  # vs champion: the macro-F1 gain's bootstrap low must exceed -margin
    proper_score: str = "brier"     # vs champion: superiority on this score of the same records: log_loss | brier
    min_score_gain: float = 0.0     # the proper score's improvement (bootstrap low) must exceed this
    max_decline_from_best: float = 0.02  # never promote this far below the best macro-F1 seen on this gate set
    max_ece_classwise: float = 0.03  # floor: class-wise ECE of the served (temperature-scaled) probabilities

    def __post_init__(self) -> None:
        if self.proper_score not in ("log_loss", "brier"):
            raise ValueError(f"gate.proper_score: {self.proper_score!r}; allowed: log_loss, brier")
        if self.noninferiority_margin < 0 or self.max_decline_from_best < 0 or self.min_slice_shipments < 1:
            raise ValueError("gate.noninferiority_margin and max_decline_from_best must be >= 0, "
                             "min_slice_shipments >= 1")


@dataclass(frozen=True, config=STRICT)
class MonitorConfig:
    """The hourly monitor (flows/monitor.py, mmcore/monitor/): captured traffic judged, triggers for a retrain."""

    window_minutes: int = 60        # one window of captured traffic (the `monitor` deployment runs hourly)
    settle_s: float = 120.0         # how long the capture step waits for a period's counts to settle
    capture_dirs: tuple[str, ...] = ()  # capture folders of the serving replicas; () = PARCEL_CAPTURE_DIR's default
    lookback_days: float = 30.0     # live quality reads the answers of this many days back
    reference_records: int = 2000   # train-split records sampled as the drift reference
    drift_records: int = 500        # window records sampled for embedding drift (the encoders' CPU cost)
    min_live_labels: int = 50       # fewer labelled answers of a version: only its estimated quality counts
    n_boot: int = 1000              # shipment bootstrap rounds of live quality's intervals
    min_new_labels: int = 200       # trigger: this many newly labelled production records since the last retrain
    max_live_drop: float = 0.05     # trigger: live macro-F1's interval lies this far below the gate-set figure
    drift_windows: int = 3          # trigger: an encoder drifts in this many of the last drift_window_span windows
    drift_window_span: int = 4      # trigger: windows the drift rule counts in (k of n: one false alarm never retrains)
    cooldown_hours: float = 24.0    # at most one monitor-started retrain per this many hours (operators: never held)
    min_retrain_labels: int = 50    # a live_drop or drift retrain needs this many labels joined since the last retrain
    min_drift_auc: float = 0.55     # an encoder's drift counts toward a retrain only at this held-out AUC or above
    max_estimated_drop: float = 0.10  # alert (no retrain): estimated macro-F1 this far below the gate-set figure
    _tuples = field_validator("capture_dirs", mode="before")(_as_tuple)

    def __post_init__(self) -> None:
        if self.window_minutes < 1 or self.drift_windows < 1 or self.min_new_labels < 1:
            raise ValueError("monitor.window_minutes, drift_windows and min_new_labels must be at least 1")
        if self.drift_windows > self.drift_window_span or self.cooldown_hours < 0 or self.min_retrain_labels < 1:
            raise ValueError("monitor.drift_windows must be at most drift_window_span, cooldown_hours at least 0 "
                             "and min_retrain_labels at least 1")
        if not 0.5 <= self.min_drift_auc < 1:
            raise ValueError(f"monitor.min_drift_auc: {self.min_drift_auc}; a held-out AUC in [0.5, 1) "
                             "(0.5: every significant drift counts)")


@dataclass(frozen=True, config=STRICT)
class ServeConfig:
    """Which encoder graphs the model is trained and served on (mmcore/stages/int8_choice.py, chosen at training)
    and which runtime serves it (mmcore/serving)."""

    backend: str = "auto"               # auto (int8 where the model was trained on it, else onnx_fp32) | onnx_fp32 | onnx_int8 | torch
    quantise: bool = True               # frozen encoders: train on int8 graphs too, chosen on val within the margins below
    max_quantised_drop: float = 0.01    # int8 chosen when its val macro-F1 is at most this far below fp32's; vetoed on the gate set only when the whole interval of its gain is below minus this
    max_quantised_brier_rise: float = 0.01   # and when its val Brier score (temperature-scaled as served, temperature fitted on val) is at most this far above fp32's
    calibration_images: int = 64        # training-split images for int8 activation ranges (static quantisation)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"serve.backend: {self.backend!r}; allowed: {', '.join(BACKENDS)}")


BACKENDS = ("auto", "onnx_int8", "onnx_fp32", "torch")


@dataclass(frozen=True, config=STRICT)
class RegistryConfig:
    """MLflow names (mmcore/registry.py)."""

    experiment: str                 # MLflow experiment the stages log their runs to
    model_name: str                 # registered model; its aliases are champion and challenger


@dataclass(frozen=True, config=STRICT)
class Params:
    synth: SynthConfig
    ingest: IngestConfig
    validate: ValidateConfig
    split: SplitConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    gate: GateConfig
    registry: RegistryConfig
    monitor: MonitorConfig
    selective: SelectiveConfig
    serve: ServeConfig = field(default_factory=ServeConfig)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_photo_sides(self.synth, self.ingest)


SECTIONS: dict[str, type] = {
    "synth": SynthConfig, "ingest": IngestConfig, "validate": ValidateConfig, "split": SplitConfig,
    "model": ModelConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "gate": GateConfig,
    "registry": RegistryConfig, "monitor": MonitorConfig, "selective": SelectiveConfig, "serve": ServeConfig}


class ParamsError(ValueError):
    """params.yaml, or overrides of it, that cannot load; the message names each key and what it allows."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading `1e-4` and `1.5E3` as numbers, as YAML 1.2 (and DVC) do: YAML 1.1
    takes a float only with a dot and a signed exponent, so plain PyYAML gives `lr: 1e-4` as text."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML as params.yaml and `--set` values are read: safe, with YAML 1.2's floats (`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def from_dict(cls: type[Any], data: Any, where: str = "") -> Any:
    """A config built from plain data as a file gives it (mappings for sections, lists for tuples),
    every type checked strictly; ParamsError names each bad key under `where` (e.g. `synth.shift`)."""
    try:
        return _adapter(cls).validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        raise ParamsError("\n".join(_problem(err, cls, where) for err in exc.errors(include_url=False))) from None


_EXPECTED = {"int_type": "a whole number", "float_type": "a number", "bool_type": "true or false",
             "string_type": "text", "dict_type": "a mapping", "dataclass_type": "a mapping",
             "list_type": "a list", "tuple_type": "a list"}


def _problem(err: Any, cls: type, where: str) -> str:
    """One pydantic error as params.yaml's user reads it: the key's path, then what is wrong."""
    loc = tuple(err["loc"])
    path = _path(where, loc)
    if err["type"] == "value_error":   # a section's own check: its message names its keys
        return str(err["ctx"]["error"])
    if err["type"] == "missing":
        return f"missing {'section' if cls is Params and len(loc) == 1 else 'key'} {path} (it has no default)"
    if err["type"] != "unexpected_keyword_argument":
        return f"{path} = {err['input']!r}: expected {_EXPECTED.get(err['type'], err['msg'])}"
    owner = functools.reduce(lambda c, name: c.__pydantic_fields__[name].annotation, loc[:-1], cls)
    keys = [f.name for f in dataclasses.fields(owner) if f.name != "raw"]
    if owner is Params:
        return f"unknown section {loc[-1]!r}{_did_you_mean(str(loc[-1]), keys)}; sections: {', '.join(keys)}"
    parent = _path(where, loc[:-1]) or owner.__name__
    return (f"unknown key {path}{_did_you_mean(str(loc[-1]), keys, parent + '.')}\n"
            f"  {parent} keys: {', '.join(sorted(keys))}")


def _path(where: str, loc: tuple[Any, ...]) -> str:
    """`train.epochs`, `validate.brightness_range[0]`, `synth.class_mix.normal`."""
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _did_you_mean(name: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml into typed sections; ParamsError names every bad key."""
    return params_from_raw(load_yaml(Path(path).read_text(encoding="utf-8")) or {})


def params_from_raw(raw: dict[str, Any]) -> Params:
    """params.yaml's mapping into typed sections (what `load_params` does after reading the file)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: expected a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("serve", {})   # optional: a params.yaml from before the serve section still loads
    sections = {name: {} if body is None else body for name, body in raw.items()}   # `serve:` alone: defaults
    return dataclasses.replace(from_dict(Params, sections), raw=raw)


def check_overrides(path: str | Path, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Overrides ({section: {key: value}}) checked against the typed config before anything runs, by
    loading params.yaml as it would become: unknown sections and keys (with the allowed ones and a close
    match), values of the wrong type, every section's own checks. Raises ParamsError naming each
    problem; returns the overrides."""
    raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    merged = {name: dict(body or {}) for name, body in raw.items()}
    for section, values in (overrides or {}).items():
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    params_from_raw(merged)
    return overrides


def _check_photo_sides(synth: SynthConfig, ingest: IngestConfig) -> None:
    """The generator's photos must pass ingest: one below ingest.image_min_side would be quarantined."""
    sides = {"synth.image_size": synth.image_size}
    if synth.shift.image_width:
        sides |= {"synth.shift.image_width": synth.shift.image_width,
                  "synth.shift.image_height": synth.shift.image_height}
    small = [f"{name} = {side}" for name, side in sides.items() if side < ingest.image_min_side]
    if small:
        raise ValueError(f"{', '.join(small)} below ingest.image_min_side = {ingest.image_min_side}: "
                         "ingest would quarantine those photos (image_too_small)")


def apply_overrides(path: Path, overrides: dict[str, dict[str, Any]]) -> list[str]:
    """Write overrides into params.yaml, comments kept; checked by the typed config first (as
    `dvc exp run -S` would be). Used by the retrain flow's `overrides` and the sweep's winner."""
    from ruamel.yaml import YAML

    overrides = check_overrides(path, overrides)   # ParamsError: which key, what it allows

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096          # never wrap a line the user wrote on one
    data = rt.load(path.read_text(encoding="utf-8"))
    changed = []
    for section, values in (overrides or {}).items():
        if section not in data or not isinstance(values, dict):
            raise ValueError(f"override {section!r}: expected an existing params.yaml section and a mapping")
        for key, value in values.items():
            if data[section].get(key) != value:
                data[section][key] = value
                changed.append(f"{section}.{key}={value!r}")
    if changed:
        tmp = path.with_name(f".{path.name}.new")
        with tmp.open("w", encoding="utf-8") as f:
            rt.dump(data, f)
        try:
            load_params(tmp)  # an unknown key or a bad value fails here, params.yaml untouched
        except Exception:
            tmp.unlink()
            raise
        os.replace(tmp, path)
    return changed
