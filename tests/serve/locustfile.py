"""Load for tests/serve/test_load.py (run by `locust --headless`, never imported by pytest):
each user posts one to four distinct records, some with a modality missing, back to back."""
from __future__ import annotations

import json
import os
import random

from locust import HttpUser, task

from mmcore.bench.serve import synthetic_records

POOL = synthetic_records(64, seed=11)
for i, rec in enumerate(POOL):
    if i % 4 == 1:
        rec.pop("image")
    elif i % 4 == 2:
        rec["note"] = None
    elif i % 4 == 3:
        rec.pop("sensor")


class Client(HttpUser):
    def on_start(self) -> None:
        self.rng = random.Random(id(self))

    @task
    def predict(self) -> None:
        records = self.rng.sample(POOL, self.rng.choice((1, 1, 1, 2, 4)))
        with self.client.post("/predict", data=json.dumps({"records": records}), timeout=120,
                              headers={"content-type": "application/json", "x-api-key": os.environ["PARCEL_API_KEY"]},
                              catch_response=True) as resp:
            if resp.status_code != 200 or len(resp.json()) != len(records):
                resp.failure(f"status {resp.status_code}")
