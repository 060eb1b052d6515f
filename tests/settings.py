"""The settings the slow tests run the pipeline and the production profile with, in one place.

Each is an override of a production value (params.yaml, .env.example) that keeps a test small and its waits
short without changing what it checks. A setting that fault tests should not spend time on (a new training
option, say) is switched off here, in FAULTS, once for every fault test.
"""
from __future__ import annotations

# params.yaml overrides of the day-by-day scenario (tests/flows/test_scenario.py)
SCENARIO = {
    "synth": {"image_size": 128},
    # day 0 is a few dozen shipments: the concat head (params.yaml's attention needs more data)
    "model": {"image_size": 96, "fusion": "concat"},
    "train": {"epochs": 8, "patience": 8, "lr": 0.002},
    # a few hundred records in all: 5 % of shipments calibrate abstention (15 % would take a fifth of the
    # little training data the loop's v4 has to win with)
    "split": {"calib_fraction": 0.05},
    "validate": {"min_rows": 20},
    "evaluate": {"n_boot": 2000, "latency_records": 5, "latency_warmup": 1, "latency_repeats": 1,
                 "behaviour_records": 40},
    "gate": {"min_macro_f1": 0.2, "min_accuracy": 0.2, "min_class_f1": 0.0, "max_ece": 1.0,
             "max_ece_classwise": 1.0, "max_latency_p95_ms": 60000},
    # a few dozen calib and gate-set records: abstention is checked, with room for that noise
    "selective": {"coverage_slack": 0.3, "max_automation_drop": 1.0},
    # fp32 only: the loop's verdicts are what this checks; the int8 choice has its own tests (tests/unit/test_int8.py)
    # and the end-to-end run keeps it on
    "serve": {"quantise": False},
    "monitor": {"min_new_labels": 250, "min_live_labels": 30, "n_boot": 500, "settle_s": 60,
                "reference_records": 300, "drift_records": 300},
}

# The fault tests (tests/flows/test_profile_faults.py): the scenario's small model, fewer epochs, a short
# bootstrap and behavioural suite, fp32 only (what they check is the state after a fault, not quality)
FAULTS = {**SCENARIO, "train": {"epochs": 6, "patience": 6, "lr": 0.002},
          "evaluate": {**SCENARIO["evaluate"], "n_boot": 300, "behaviour_records": 20}}

# .env overrides of every profile a test starts (tests/flows/harness.py): a refused connection to the bucket
# gives up after 2 s instead of 10, and a transient failure is retried after 4, 8 and 16 s instead of 10, 20
# and 40: still past the PostgreSQL fault's 20 s outage, which a run should ride through. Production values:
# .env.example. A dead run is still noticed after 90 s of silence, as in production (mmcore/profile/__main__.py
# says why that one stays).
PROFILE_TIMINGS = {"PROFILE_DVC_CONNECT_TIMEOUT_S": "2", "PARCEL_RETRY_DELAY_S": "4"}
