#!/usr/bin/env python3
"""Foundation benchmark: rows/s per slot and TaskManager peak RSS.

Starts `eddy local` (real processes, release build, 2 TaskManagers x 1 slot),
runs bounded jobs at parallelism 1 and 2, and prints a markdown table. Job
time is the JobManager's own start->end time of the job (from the commit that
marks it RUNNING to the commit that marks it FINISHED), so process start-up is
not counted; row counts are large enough that those commits' latency is noise.

  scripts/bench.py [--rows N] [--bin-dir target/release]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

STATELESS = """
name: bench-stateless
parallelism: {p}
nodes:
  - {{id: gen, kind: datagen, count: {rows}, fields: [
      {{name: id, type: int64, gen: sequence}},
      {{name: v, type: int64, gen: random, min: 0, max: 1000}}]}}
  - {{id: keep, kind: filter, input: gen, predicate: "v >= 100"}}
  - {{id: out, kind: blackhole, input: keep}}
"""

WINDOW = """
name: bench-window
parallelism: {p}
nodes:
  - {{id: gen, kind: datagen, count: {rows}, fields: [
      {{name: id, type: int64, gen: sequence}},
      {{name: key, type: int64, gen: random, min: 0, max: 99999}},
      {{name: amount, type: float64, gen: random, min: 0, max: 100}},
      {{name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}}]}}
  - {{id: w, kind: window, input: gen, key_by: [key],
     event_time: {{column: ts, max_out_of_orderness: 100ms}},
     window: {{type: tumbling, size: 10s}},
     aggregates: [{{fn: count, as: n}}, {{fn: sum, column: amount, as: total}}]}}
  - {{id: out, kind: blackhole, input: w}}
"""


def http(url, body=None, content_type="application/yaml"):
    req = urllib.request.Request(url, data=body.encode() if body else None,
                                 headers={"Content-Type": content_type} if body else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def peak_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000_000)
    ap.add_argument("--window-rows", type=int, default=200_000_000)
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    args = ap.parse_args()

    data = tempfile.mkdtemp(prefix="eddy-bench-")
    proc = subprocess.Popen([os.path.join(args.bin_dir, "eddy"), "local", "--rest-port", "0",
                             "--taskmanagers", "2", "--slots", "1", "--data-dir", data],
                            stdout=subprocess.PIPE, text=True)
    url = None
    for line in proc.stdout:
        if line.startswith("REST:"):
            url = line.split()[1]
        if "press Ctrl-C" in line:
            break
    if not url:
        sys.exit("eddy local did not start")
    tm_pids = []
    for d in sorted(os.listdir(data)):
        if d.startswith("taskmanager"):
            with open(os.path.join(data, d, "ready.json")) as f:
                tm_pids.append(json.load(f)["pid"])
    idle_rss = max(rss(p) for p in tm_pids)
    results = []
    try:
        for name, template, rows in (("datagen -> filter -> blackhole", STATELESS, args.rows),
                                     ("keyed tumbling window, 100k keys", WINDOW, args.window_rows)):
            for p in (1, 2):
                job = http(f"{url}/v1/jobs", template.format(p=p, rows=rows))["job_id"]
                while True:
                    d = http(f"{url}/v1/jobs/{job}")
                    if d["state"] in ("FINISHED", "FAILED", "CANCELED"):
                        break
                    time.sleep(0.2)
                if d["state"] != "FINISHED":
                    sys.exit(f"{name} p={p} ended {d['state']}: {d.get('failure')}")
                # Every row the sources made reached the last vertex (a job
                # chained into one vertex has no edge to check).
                made = d["vertices"][0]["records_out"]
                arrived = d["vertices"][-1]["records_in"]
                if len(d["vertices"]) > 1 and (made == 0 or made != arrived):
                    sys.exit(f"{name} p={p}: sources emitted {made} rows but {arrived} arrived")
                secs = d["duration_ms"] / 1000.0
                per_slot = rows / secs / p
                results.append((name, p, rows, secs, rows / secs, per_slot))
                print(f"{name:35s} p={p} rows={rows} time={secs:.2f}s "
                      f"total={rows / secs / 1e6:.2f}M rows/s per-slot={per_slot / 1e6:.2f}M rows/s", flush=True)
        peak = max(peak_rss(p) for p in tm_pids)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    print()
    print("| job | parallelism | rows | time (s) | rows/s total | rows/s per slot |")
    print("|---|---|---|---|---|---|")
    for name, p, rows, secs, total, per_slot in results:
        print(f"| {name} | {p} | {rows:,} | {secs:.2f} | {total / 1e6:.2f}M | {per_slot / 1e6:.2f}M |")
    print()
    print(f"TaskManager RSS idle (after start): {idle_rss / 2**20:.1f} MiB; peak over the run: {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
