"""Continuous retraining, day by day, through the real deployments, on the production profile.

`python -m mmcore.profile up` (what `make up` runs) starts PostgreSQL, the S3 stand-in, MLflow and Prefect
on PostgreSQL, the process worker and nginx in a tiny copy of the project, and registers prefect.yaml's
deployments; each day's run is triggered through the REST API, exactly as the schedules would. Real flow,
real `dvc repro` and `dvc push` to the bucket, real MLflow server, real gate, real bento builds, and the
champion's bento behind nginx, switched blue/green after each promotion:

  day 0  150 good records (~55 shipments) -> champion v1, bento v1, served behind the proxy
  day 1  200 more good records           -> v2 clearly better on the gate set: promoted, bento v2; clients
                                            sending through the proxy during the switch see no failure
  day 2  150 records, 90% labels flipped -> v3 not better: rejected, champion and bento stay v2, webhook
  day 3  a batch with 60% broken lines   -> quarantined whole, validation fails, nothing trains, webhook
  day 4  nothing                         -> a no-op run that ends in under 30 s
  day 5  the loop (issue 13): bento v2 served with capture on answers 240 records of the usual hubs;
         the `monitor` deployment lands and judges that window: nothing lost, no alert
  day 6  450 records from a new hub (camera, notes, tracker: the `new_hub` preset): the window's
         embeddings drift and v2's estimated quality falls
  day 7  inspections label most answers of both days by prediction_id; the next window joins them,
         reports live quality per version and hub next to v2's gate-set figure and emits
         `parcel.monitor.retrain`, which starts `retrain-on-monitor` by itself; the captured
         records, labelled, are in the fit records of the version it trains (v4)
  day 8  v4, promoted, serves 200 more new-hub records: its live accuracy there recovers at least
         half of what v2 lost on the new hub

Overrides that keep it small (SCENARIO, in tests/settings.py): small images, the concat head, few epochs, a
short latency probe, 40 records for the behavioural suites, a 5 % calib split, and gate floors low enough for a first
model judged on ~30 gate-set records. The
comparative rules (macro-F1 non-inferior within gate.noninferiority_margin and the Brier score better, both on the
shipment bootstrap's low end; class and slice F1 drops on one band) are the project's own, so day 1 must
genuinely win and day 2 genuinely fail to.

Day 8's promotion probability under the gate benchmark's figures (mmcore.bench.gate, simulated models
calibrated by the train stage's own calibration; v4 taken as +0.065 macro-F1 over a 0.75 champion on a
~240-record gate set, the issue's figures), with params.yaml carrying SCENARIO's gate, selective and split
overrides (P):
  python -m mmcore.bench gate --params P --scenarios better --better-gap 0.065 --champion-f1 0.75
         --gate-records 240 --reps 300 --sigma-model S --out x.json
with the models' own noise S=0.45 calibrated to two retrains on the default data: 0.94 [0.91, 0.96]
(17 of 300 inconclusive, none rejected); with S=3.0, which reproduces the issue's 44 % for the old rule
(0.49 here): 0.51 [0.45, 0.56]. So day 8 passes at least 9 times in 10 if real retrains are as
correlated as two default-data retrains were, and is a coin toss if they are as noisy as the issue's
figure implies: the gate alone cannot make it safer, more labelled new-hub data can (the same setting
reached 0.89 at 600 gate-set records and 1.00 at 1200 in an earlier run of the bench).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from mmcore.config import CLASSES, load_params
from tests.flows.harness import ProfileServer, Receiver, make_workspace, wait_until
from tests.settings import SCENARIO

pytestmark = [pytest.mark.slow, pytest.mark.profile]

DAY_TIMEOUT = 600


def write_bad_batch(landing: Path, batch_id: str, n: int, broken: float, cfg: Any) -> None:
    """A batch whose first `broken` share of lines is cut off mid-record (bad_json)."""
    from mmcore.synth.generate import generate_batch

    bdir = generate_batch(landing, batch_id, n, cfg, seed=400)
    lines = (bdir / "records.jsonl").read_text().splitlines()
    k = int(len(lines) * broken)
    (bdir / "records.jsonl").write_text("\n".join([ln[: len(ln) // 2] for ln in lines[:k]] + lines[k:]) + "\n")


class Scenario:
    """Runs the days in order, once each, remembering what each left behind."""

    def __init__(self, ws: Path, server: ProfileServer, receiver: Receiver) -> None:
        self.ws, self.server, self.receiver = ws, server, receiver
        self.landing = ws / "drop"   # not data/landing: the `landing` parameter moves the ingest stage
        self.done: dict[int, dict[str, Any]] = {}

    def land(self, day: int) -> None:
        from mmcore.synth.generate import generate_batch

        cfg = load_params(self.ws / "params.yaml").synth
        if day == 0:
            generate_batch(self.landing, "day0", 150, cfg, seed=100)
        elif day == 1:
            generate_batch(self.landing, "day1", 200, cfg, seed=200)
        elif day == 2:
            import dataclasses
            generate_batch(self.landing, "day2", 150, dataclasses.replace(cfg, label_noise=0.9), seed=300)
        elif day == 3:
            write_bad_batch(self.landing, "day3", 40, 0.6, cfg)

    def day(self, n: int) -> dict[str, Any]:
        for d in range(n + 1):
            if d not in self.done:
                self.done[d] = self.run_day(d)
        if self.done[n].get("error"):
            pytest.fail(f"day {n} could not run: {self.done[n]['error']}")
        return self.done[n]

    def run_day(self, d: int) -> dict[str, Any]:
        try:
            self.land(d)
            posts = len(self.receiver.posts)
            # day 0 through the nightly deployment (force, with an override), the others through the poll
            deployment, params = (("nightly", {"landing": str(self.landing), "overrides": {"evaluate": {"n_boot": 1000}}})
                                  if d == 0 else ("poll-landing", {"landing": str(self.landing)}))
            t0 = time.monotonic()
            run_id = self.server.trigger(deployment, params)
            # day 1's promotion switches the proxy: clients send through it from its package stage on
            clients = ProxyClients(self.server, run_id) if d == 1 else None
            run = self.server.wait(run_id, DAY_TIMEOUT)
            wall = time.monotonic() - t0
            traffic = clients.finish() if clients else None
        except BaseException as exc:  # keep the day's failure for its test, and stop the next days
            return {"error": f"{type(exc).__name__}: {exc}"}
        folder = max((p for p in (self.ws / "reports" / "runs").iterdir() if p.is_dir()), key=lambda p: p.name)
        return {"run": run, "run_id": run_id, "wall": wall, "state": run["state"]["type"],
                "folder": folder, "summary": json.loads((folder / "run.json").read_text()),
                "posts": self.receiver.posts[posts:], "artifacts": self.server.artifacts(run_id),
                "versions": self.versions(), "bentos": self.bentos(), "logs": self.server.logs(run_id),
                "live": self.live(), "traffic": traffic}

    def versions(self) -> dict[str, Any]:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.server.mlflow_uri)
        try:
            champion = client.get_model_version_by_alias("parcel-condition", "champion").version
        except Exception:
            champion = None
        all_versions = sorted(int(v.version) for v in client.search_model_versions("name='parcel-condition'"))
        return {"champion": None if champion is None else int(champion), "all": all_versions}

    def live(self) -> dict[str, Any] | None:
        from mmcore.serving.bluegreen import live

        return live(self.server.profile)

    def bentos(self) -> list[str]:
        root = self.ws / ".bentoml" / "bentos" / "parcel-condition"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[tuple[ProfileServer, Path]]:
    """`make up` in the workspace (the work pool, the deployments, the alert block and the worker included),
    `make down` at the end."""
    ws = tmp_path_factory.mktemp("scenario")
    make_workspace(ws, SCENARIO)
    srv = ProfileServer(ws, {"PROFILE_WEBHOOK_URL": receiver.url})
    try:
        srv.start(ws)
        yield srv, ws
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def scenario(server: tuple[ProfileServer, Path], receiver: Receiver) -> Scenario:
    srv, ws = server
    # the hourly monitor would otherwise run whenever the clock passes :05, ingesting between the days
    hourly = srv.get("/deployments/name/monitor/monitor")["schedules"][0]["id"]
    srv.cli(["--no-prompt", "deployment", "schedule", "pause", "monitor/monitor", hourly], ws)
    return Scenario(ws, srv, receiver)


class ProxyClients:
    """A few clients (bounded, loopback) posting one record at a time through the profile's nginx, from
    the moment the run's package stage starts until the run ends; each answer or failure is recorded
    with the time its request was sent."""

    def __init__(self, server: ProfileServer, run_id: str, clients: int = 4, pause_s: float = 0.25) -> None:
        from mmcore.bench.serve import synthetic_records

        self.url, self.pause_s, self.stop = f"{server.profile.proxy_url}/predict", pause_s, threading.Event()
        self.key = server.key
        self.answers: list[tuple[float, str]] = []    # (sent at, model_version)
        self.failures: list[str] = []
        self.bodies = [{"records": [r]} for r in synthetic_records(clients, seed=11)]
        wait_until(lambda: server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}},
                                                             "task_runs": {"name": {"any_": ["package"]}}}),
                   DAY_TIMEOUT, "day 1's package stage")
        self.threads = [threading.Thread(target=self.send, args=(b,), daemon=True) for b in self.bodies]
        for t in self.threads:
            t.start()

    def send(self, body: dict) -> None:
        with httpx.Client(timeout=60, headers=self.key) as http:
            while not self.stop.is_set():
                sent = time.time()
                try:
                    resp = http.post(self.url, json=body)
                    if resp.status_code == 200:
                        self.answers.append((sent, str(resp.json()[0]["model_version"])))
                    else:
                        self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(self.pause_s)

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
        return {"answers": sorted(self.answers), "failures": self.failures}


def test_deployments_have_schedules_parameters_and_a_concurrency_limit(scenario: Scenario) -> None:
    deps = {d["name"]: d for d in scenario.server.post("/deployments/filter", {})}
    assert {"nightly", "poll-landing", "monitor", "retrain-on-monitor"} <= set(deps)
    assert deps["monitor"]["schedules"][0]["schedule"]["cron"] == "5 * * * *"
    assert deps["monitor"]["entrypoint"] == "flows/monitor.py:monitor"
    nightly, poll = deps["nightly"], deps["poll-landing"]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert poll["schedules"][0]["schedule"]["interval"] == 600
    for dep in (nightly, poll):
        assert dep["work_pool_name"] == "retrain-pool" and dep["entrypoint"] == "flows/retrain.py:retrain"
        assert dep["parameters"]["notify_block"] == "retrain-alerts" and dep["global_concurrency_limit"]["limit"] == 1
        assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(scenario.ws)
    assert nightly["parameters"]["force"] is True and poll["parameters"]["force"] is False
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert poll["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"


def test_day0_deployment_run_completes_end_to_end_with_champion_v1(scenario: Scenario) -> None:
    day = scenario.day(0)
    assert day["state"] == "COMPLETED", day["logs"][-3000:]
    assert day["versions"] == {"champion": 1, "all": [1]} and day["bentos"] == ["v1"]
    assert day["summary"]["verdict"]["status"] == "promoted"
    assert [s["stage"] for s in day["summary"]["stages"] if s["ran"]] == [
        "ingest", "validate", "split", "train", "evaluate", "gate", "package"]
    assert {"data-accounting", "validation-drift", "metrics", "gate-verdict", "run-report"} <= set(day["artifacts"])
    assert {"report.html", "drift.md", "drift.json", "ingest.json", "gate.json"} <= {p.name for p in day["folder"].iterdir()}
    # the parameters reached the pipeline: the landing area moved, the override is in params.yaml and dvc.lock
    lock = yaml.safe_load((scenario.ws / "dvc.lock").read_text())["stages"]
    assert f"--landing {scenario.landing}" in lock["ingest"]["cmd"]
    assert load_params(scenario.ws / "params.yaml").evaluate.n_boot == 1000
    assert lock["evaluate"]["params"]["params.yaml"]["evaluate"]["n_boot"] == 1000
    assert day["posts"] == []
    # the profile: the champion's bento went live behind nginx, its data versions are in the bucket
    assert day["live"]["bento"] == "parcel-condition:v1", day["live"]
    answer = httpx.post(f"{scenario.server.profile.proxy_url}/predict", json={"records": [{"note": "box wet"}]},
                        headers=scenario.server.key, timeout=60)
    assert answer.status_code == 200 and answer.json()[0]["model_version"] == "1"
    from mmcore.profile import objectstore

    keys = [o["key"] for o in objectstore.manifest(scenario.server.profile)]
    assert any(k.startswith("dvc/") for k in keys) and "bentos/parcel-condition-v1.tar" in keys
    assert any(k.startswith("mlflow/") for k in keys)


def test_day1_the_switch_through_the_proxy_fails_no_request_and_then_serves_v2(scenario: Scenario) -> None:
    """Concurrent clients through nginx while the deploy step starts v2 beside v1, reloads nginx and stops v1."""
    day = scenario.day(1)
    traffic, live = day["traffic"], day["live"]
    assert live["bento"] == "parcel-condition:v2", live
    assert traffic["failures"] == [], traffic["failures"][:5]
    before = [v for t, v in traffic["answers"] if t < live["switched_at"]]
    after = [v for t, v in traffic["answers"] if t >= live["switched_at"]]
    print(f"through the proxy during day 1: {len(before)} answers before the switch "
          f"({before.count('1')} from v1), {len(after)} after, no failure")
    assert before.count("1") >= 10 and len(after) >= 10
    assert set(after) == {"2"}, sorted(set(after))
    assert scenario.server.ctl("status", "bento-blue", "bento-green").count("RUNNING") == 1
    # each bento pins its own model (a bento argument), so v1 stays v1 for a rollback
    for v in (1, 2):
        info = yaml.safe_load((scenario.ws / ".bentoml" / "bentos" / "parcel-condition" / f"v{v}" / "bento.yaml").read_text())
        assert info["args"]["model_tag"] == f"parcel-condition:v{v}"


def test_day1_more_good_data_promotes_v2_and_builds_its_bento(scenario: Scenario) -> None:
    day = scenario.day(1)
    assert day["state"] == "COMPLETED", day["logs"][-3000:]
    gate = json.loads((day["folder"] / "gate.json").read_text())
    assert gate["promoted"] is True, gate["reasons"]
    assert gate["comparison"]["scores"]["brier"]["low"] > 0 and gate["compared_with"] == 1
    assert day["versions"] == {"champion": 2, "all": [1, 2]} and day["bentos"] == ["v1", "v2"]
    assert json.loads((day["folder"] / "package.json").read_text())["bento"] == "parcel-condition:v2"
    assert (day["folder"] / "drift.md").is_file() and day["posts"] == []


def test_day2_noisy_labels_are_rejected_and_nothing_served_changes(scenario: Scenario) -> None:
    day = scenario.day(2)
    assert day["state"] == "COMPLETED", day["logs"][-3000:]
    gate = json.loads((day["folder"] / "gate.json").read_text())
    assert gate["promoted"] is False and gate["challenger_version"] == 3 and gate["failed"]
    assert day["versions"] == {"champion": 2, "all": [1, 2, 3]}
    assert day["bentos"] == ["v1", "v2"]   # no bento of the rejected model
    assert json.loads((scenario.ws / "reports" / "package.json").read_text())["bento"] == "parcel-condition:v2"
    assert day["summary"]["verdict"]["status"] == "rejected"
    assert [p["event"] for p in day["posts"]] == ["retrain.rejected"]
    assert day["posts"][0]["reasons"] and day["posts"][0]["flow_run_id"] == day["run_id"]


def test_day3_broken_batch_is_quarantined_validation_fails_and_nothing_trains(scenario: Scenario) -> None:
    day = scenario.day(3)
    assert day["state"] == "FAILED"
    ingest = json.loads((day["folder"] / "ingest.json").read_text())
    assert ingest["batches"]["day3"]["status"] == "rejected" and ingest["batches"]["day3"]["accepted"] == 0
    assert ingest["landed"] == ingest["accepted"] + ingest["quarantined"]
    validation = json.loads((day["folder"] / "validation.json").read_text())
    assert validation["success"] is False and any("day3" in f for f in validation["hard_failures"])
    ran = [s["stage"] for s in day["summary"]["stages"] if s["ran"]]
    assert "train" not in ran and not (day["folder"] / "gate.json").exists()
    assert day["versions"] == {"champion": 2, "all": [1, 2, 3]} and day["bentos"] == ["v1", "v2"]
    assert [p["event"] for p in day["posts"]] == ["retrain.validation_failed"]
    assert (day["folder"] / "drift.md").is_file()


def test_day4_without_new_data_is_a_fast_noop(scenario: Scenario) -> None:
    day = scenario.day(4)
    assert day["state"] == "COMPLETED", day["logs"][-3000:]
    assert day["run"]["total_run_time"] <= 30, day["run"]["total_run_time"]
    assert day["summary"]["stages"] == [] and day["summary"]["verdict"]["status"] == "no_new_data"
    assert day["versions"] == {"champion": 2, "all": [1, 2, 3]} and day["posts"] == []
    assert "gate-verdict" in day["artifacts"]


def test_a_second_run_waits_for_the_running_one(scenario: Scenario) -> None:
    """Hold the `retrain` slot as a running retrain would: a new run must wait, then go on."""
    scenario.day(4)
    srv = scenario.server
    lease = srv.post("/v2/concurrency_limits/increment-with-lease",
                     {"names": ["retrain"], "slots": 1, "mode": "concurrency", "lease_duration": 120})
    try:
        run_id = srv.trigger("poll-landing", {"landing": str(scenario.landing)})
        wait_until(lambda: "concurrency slot" in srv.logs(run_id), 120, "the run to ask for the slot", every=1)
        time.sleep(3)
        assert srv.get(f"/flow_runs/{run_id}")["state"]["type"] == "RUNNING"
        assert "no new batch" not in srv.logs(run_id)
    finally:
        srv.request("POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease["lease_id"]})
    assert srv.wait(run_id, 120)["state"]["type"] == "COMPLETED"
    wait_until(lambda: "no new batch" in srv.logs(run_id), 30, "the run's last logs (sent in batches)")


@pytest.mark.parametrize("d, status", [(2, "rejected"), (3, "validation_failed")])
def test_each_days_report_opens_in_chromium_with_its_verdict(scenario: Scenario, d: int, status: str) -> None:
    from tests.flows.test_report_browser import dump_dom

    folder = scenario.day(d)["folder"]
    dom = dump_dom(folder / "report.html")
    assert f'data-status="{status}"' in dom
    if status == "rejected":   # the plots decode and every failed rule is named
        failed = json.loads((folder / "gate.json").read_text())["failed"]
        assert 'data-plots-decoded="4"' in dom and failed and all(rule in dom for rule in failed)
    else:                      # the batch that broke validation is named
        assert "day3" in dom and 'data-plots-total="0"' in dom


# ---- days 5-8: the loop from served traffic back into training (issue 13)

def next_second(after: float = 0.0) -> datetime:
    """The next whole second at least `after` seconds from now, once it has come."""
    now = datetime.now(timezone.utc)
    at = (now + timedelta(seconds=after)).replace(microsecond=0) + timedelta(seconds=1)
    time.sleep((at - now).total_seconds())
    return at


class Loop:
    """The champion's bento served with capture on, the `monitor` deployment run per window, labels
    landed by prediction_id, and the retrain the monitor's event starts."""

    def __init__(self, scenario: Scenario) -> None:
        from tests.e2e.test_pipeline import env_for

        self.sc, self.ws, self.srv = scenario, scenario.ws, scenario.server
        self.capture = self.ws / "capture"
        self.env = {**env_for(self.ws), "PARCEL_CAPTURE_DIR": str(self.capture),
                    "PARCEL_API_KEY": self.srv.profile.env["PARCEL_API_KEY"]}

    def traffic(self, batch: str, n: int, seed: int, shift: str | None = None) -> Path:
        import dataclasses

        from mmcore.synth.generate import generate_batch
        from mmcore.synth.shift import load_shift

        cfg = load_params(self.ws / "params.yaml").synth
        if shift:
            cfg = dataclasses.replace(cfg, shift=load_shift(shift))
        return generate_batch(self.ws / "traffic", batch, n, cfg, seed=seed)

    def serve(self, bento: str, batches: list[Path]) -> list[tuple[datetime, datetime, list[dict]]]:
        """Each batch replayed through the bento in a window of its own: (since, until, answers)."""
        from mmcore.bench.serve import serving
        from mmcore.monitor.replay import replay

        out = []
        with serving(bento, self.ws, self.env, self.ws / "logs" / f"serve-{bento.split(':')[1]}.log") as url:
            for batch in batches:
                since = next_second()
                answers = replay(url, batch, per_request=8, key=self.env["PARCEL_API_KEY"])
                out.append((since, next_second(1.0), answers))
        return out

    def monitor(self, since: datetime, until: datetime) -> dict[str, Any]:
        params = {"since": since.isoformat(), "until": until.isoformat(), "capture": [str(self.capture)]}
        run_id = self.srv.trigger("monitor", params, flow="monitor")
        run = self.srv.wait(run_id, DAY_TIMEOUT)
        assert run["state"]["type"] == "COMPLETED", self.srv.logs(run_id)[-4000:]
        window = f"capture-{since:%Y%m%dT%H%M%SZ}-{until:%Y%m%dT%H%M%SZ}"
        return {"id": run_id, "window": window, "artifacts": self.srv.artifacts(run_id),
                "report": json.loads((self.ws / "reports" / "monitor" / f"{window}.json").read_text())}

    def quiet_window(self) -> dict[str, Any]:
        """A window with no traffic: the monitor ingests the labels that arrived and judges quality."""
        return self.monitor(next_second(), next_second(1.0))

    def retrains(self) -> list[dict]:
        return self.srv.post("/flow_runs/filter", {"deployments": {"name": {"any_": ["retrain-on-monitor"]}}})

    def wait_retrains(self, n: int) -> list[dict]:
        """The first `n` retrain-on-monitor runs, once all of those there are have finished."""
        wait_until(lambda: len(self.retrains()) >= n, 120, f"{n} retrain-on-monitor run(s) started by events")
        return [self.srv.wait(r["id"], DAY_TIMEOUT) for r in self.retrains()]


def labels_for(ws: Path, name: str, answers: list[dict]) -> list[dict]:
    from mmcore.monitor.replay import label_batch

    labelled = [a for a in answers if a["true_label"]]
    label_batch(ws / "data" / "labels" / name, labelled, "inspection")
    return labelled


@pytest.fixture(scope="module")
def loop(scenario: Scenario) -> dict[str, Any]:
    assert scenario.day(4)["versions"]["champion"] == 2
    lp, ws = Loop(scenario), scenario.ws
    shutil.rmtree(scenario.landing / "day3")   # the operator removes day 3's broken batch
    posts = len(scenario.receiver.posts)
    # day 5: the usual hubs; day 6: a new hub (camera, note style, tracker: the `new_hub` preset)
    (s5, u5, usual), (s6, u6, shifted) = lp.serve("parcel-condition:v2", [lp.traffic("day5", 240, 500),
                                                                        lp.traffic("day6", 450, 600, "new_hub")])
    out: dict[str, Any] = {"usual": usual, "shifted": shifted, "w5": lp.monitor(s5, u5), "w6": lp.monitor(s6, u6)}
    # day 7: inspections label most of both days; the next window joins them and asks for a retrain
    out["labelled"] = labels_for(ws, "day5-6-inspections", usual[:216] + shifted)
    out["w7"] = lp.quiet_window()
    out["retrain"] = lp.wait_retrains(1)[0]
    out["retrain_logs"], out["versions"] = scenario.server.logs(out["retrain"]["id"]), scenario.versions()
    # day 8: the new champion serves the new hub; its labels arrive; live quality of its slice
    champion = out["versions"]["champion"]
    if champion != 2:
        [(s8, u8, after)] = lp.serve(f"parcel-condition:v{champion}", [lp.traffic("day8", 200, 700, "new_hub")])
        labels_for(ws, "day8-inspections", after)   # labelled before its window is judged: joined at once
        out["w8"], out["after"] = lp.monitor(s8, u8), after
        lp.wait_retrains(len(lp.retrains()))     # none should start, but never leave one running
    out["posts"] = scenario.receiver.posts[posts:]
    return out


def test_day5_served_answers_land_as_a_window_with_nothing_lost_and_a_stable_day_is_quiet(
        loop: dict[str, Any]) -> None:
    report, n = loop["w5"]["report"], len(loop["usual"])
    cap = report["capture"]
    assert cap["status"] == "written" and cap["captured"] == cap["landed"] == n and cap["unaccounted"] == 0
    assert report["volume"] == report["answers"] == n
    assert sum(report["confidence"]["counts"]) == n and set(report["class_mix"]["window"]) == set(CLASSES)
    assert set(report["estimated"]) == {"2"} and report["estimated"]["2"]["gate_set_macro_f1"] is not None
    assert report["quality"]["labelled_answers"] == 0
    assert report["findings"] == [], report["findings"]       # a stable day raises no alert
    assert {"monitor-window", "monitor-live-quality", "monitor-report"} <= set(loop["w5"]["artifacts"])


def test_day6_a_new_hub_moves_the_embeddings_within_one_window(loop: dict[str, Any]) -> None:
    usual, new = loop["w5"]["report"], loop["w6"]["report"]
    assert new["capture"]["landed"] == new["volume"] == len(loop["shifted"])
    assert new["drift"], new["embedding_drift"]
    assert ("alert", "drift") in [(f["kind"], f["reason"]) for f in new["findings"]]
    est = (usual["estimated"]["2"]["macro_f1"], new["estimated"]["2"]["macro_f1"])
    print(f"v2 estimated macro-F1: usual hubs {est[0]:.3f}, new hub {est[1]:.3f}")
    assert est[1] < est[0]


def test_day7_labels_join_live_quality_is_reported_and_retraining_starts_by_itself(
        scenario: Scenario, loop: dict[str, Any]) -> None:
    from tests.flows.test_report_browser import dump_dom

    report = loop["w7"]["report"]
    v2 = report["quality"]["versions"]["2"]
    assert report["quality"]["labelled_answers"] == v2["n"] == len(loop["labelled"])
    live, gate = v2["live"]["accuracy"], v2["gate_set"]["accuracy"]
    usual = [a for a in loop["labelled"] if a["prediction_id"] in {u["prediction_id"] for u in loop["usual"]}]
    hits = sum(a["label"] == a["true_label"] for a in usual) / len(usual)
    print(f"v2 live accuracy {live['observed']:.3f} [{live['low']:.3f}, {live['high']:.3f}], usual hubs {hits:.3f}, "
          f"new hub {v2['hubs']['NEW01']['accuracy']['observed']:.3f}, gate set {gate:.3f}")
    assert live["low"] <= live["observed"] <= live["high"]
    assert v2["hubs"]["NEW01"]["accuracy"]["observed"] < hits
    assert [f["reason"] for f in report["findings"] if f["kind"] == "retrain"] == ["new_labels"]
    assert {"monitor.retrain", "monitor.alert"} <= {p["event"] for p in loop["posts"]}
    dom = dump_dom(scenario.ws / "reports" / "monitor" / f"{loop['w7']['window']}.html")
    assert 'data-status="retrain"' in dom and "new_labels" in dom
    assert loop["retrain"]["state"]["type"] == "COMPLETED", loop["retrain_logs"][-4000:]
    assert loop["retrain"]["parameters"]["force"] is True


def test_day7_a_captured_request_is_followed_into_the_next_versions_training_data(
        scenario: Scenario, loop: dict[str, Any]) -> None:
    import pandas as pd
    from mlflow import MlflowClient

    ws = scenario.ws
    profile = pd.read_parquet(ws / "data" / "raw" / "records.parquet")
    joined = profile[profile["prediction_id"].isin([a["prediction_id"] for a in loop["labelled"]])]
    assert len(joined) == len(loop["labelled"]) and set(joined["label_source"]) == {"inspection"}
    assert (joined["record_id"] == "cap-" + joined["prediction_id"]).all()
    assert set(joined["batch_id"]) == {loop["w5"]["window"], loop["w6"]["window"]}
    assert (scenario.landing / loop["w5"]["window"] / "_SUCCESS").is_file()
    new = max(loop["versions"]["all"])
    assert new == 4, loop["versions"]
    client = MlflowClient(tracking_uri=scenario.server.mlflow_uri)
    run_id = client.get_model_version("parcel-condition", str(new)).run_id
    fitted = pd.read_parquet(client.download_artifacts(run_id, "reference/fit_records.parquet"))
    used = set(fitted["record_id"]) & set(joined["record_id"])
    assert len(used) >= 0.5 * len(joined), (len(used), len(joined))


def test_day8_the_promoted_challenger_recovers_half_the_new_hubs_live_loss(loop: dict[str, Any]) -> None:
    assert loop["versions"]["champion"] == 4, "the retrained challenger was not promoted"
    v2 = loop["w7"]["report"]["quality"]["versions"]["2"]
    v4 = loop["w8"]["report"]["quality"]["versions"]["4"]
    usual = {u["prediction_id"] for u in loop["usual"]}
    before = [a for a in loop["labelled"] if a["prediction_id"] in usual]
    usual_acc = sum(a["label"] == a["true_label"] for a in before) / len(before)
    new_before, new_after = v2["hubs"]["NEW01"]["accuracy"]["observed"], v4["hubs"]["NEW01"]["accuracy"]["observed"]
    print(f"live accuracy: v2 usual hubs {usual_acc:.3f}, v2 new hub {new_before:.3f}, v4 new hub {new_after:.3f}")
    assert new_after - new_before >= 0.5 * (usual_acc - new_before)
    assert loop["w8"]["report"]["capture"]["landed"] == len(loop["after"])
