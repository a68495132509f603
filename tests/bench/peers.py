#!/usr/bin/env python3
"""The same burst as `spot-bench burst-*`, run against two schedulers users pick for delayed jobs, on
the same RabbitMQ: Celery 5 tasks with an ETA, and Dramatiq's delayed messages. Prints one JSON line
per peer with the fields spot-bench prints for its own bursts (schedule_per_s, fired,
lateness_ms_p50/p99/max); `--ours FILE` (a spot-bench burst line) adds each figure's ratio to ours.

Method, as spot-bench's: `--jobs` jobs due evenly over `--spread` seconds, starting `--lead` seconds
ahead; a worker (two processes, as many as the cores) runs from before the first is scheduled; each
task appends `fire - scheduled instant` in ms to a file; the run ends when every job has fired or
`lead + spread + 120` s have passed. Each peer gets a RabbitMQ vhost of its own, removed after.

    python3 tests/bench/peers.py [--jobs 20000] [--spread 10] [--lead 45] [--peers celery,dramatiq]
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

MANAGEMENT = "http://127.0.0.1:15672/api"

CELERY_APP = """
import os, time
from celery import Celery
app = Celery("peers", broker=os.environ["PEERS_BROKER"])
app.conf.worker_hijack_root_logger = False
OUT = os.environ["PEERS_OUT"]

@app.task(name="fire", ignore_result=True)
def fire(due_ms):
    with open(OUT, "a") as out:
        out.write("%d\\n" % (int(time.time() * 1000) - due_ms))
"""

DRAMATIQ_APP = """
import os, time
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
dramatiq.set_broker(RabbitmqBroker(url=os.environ["PEERS_BROKER"]))
OUT = os.environ["PEERS_OUT"]

@dramatiq.actor(max_retries=0)
def fire(due_ms):
    with open(OUT, "a") as out:
        out.write("%d\\n" % (int(time.time() * 1000) - due_ms))
"""


def management(method, path, body=None):
    request = urllib.request.Request(MANAGEMENT + path, method=method, data=body)
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request, timeout=30).read()


def percentile(values, p):
    if not values:
        return 0
    rank = round(p / 100 * (len(values) - 1))
    return values[min(rank, len(values) - 1)]


def run(peer, jobs, spread, lead):
    vhost = "peers-%s-%s" % (peer, uuid.uuid4().hex[:8])
    management("PUT", "/vhosts/" + vhost, b"{}")
    management("PUT", "/permissions/%s/guest" % vhost,
               b'{"configure":".*","write":".*","read":".*"}')
    work = tempfile.mkdtemp(prefix="spot-peers-")
    out = os.path.join(work, "lateness")
    open(out, "w").close()
    module = "peers_%s" % peer
    with open(os.path.join(work, module + ".py"), "w") as source:
        source.write(CELERY_APP if peer == "celery" else DRAMATIQ_APP)
    env = dict(os.environ, PEERS_BROKER="amqp://guest:guest@127.0.0.1:5672/" + vhost,
               PEERS_OUT=out, PYTHONPATH=work)
    if peer == "celery":
        worker = [sys.executable, "-m", "celery", "-A", module, "worker", "--concurrency", "2",
                  "--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
    else:
        worker = [sys.executable, "-m", "dramatiq", module, "--processes", "2", "--threads", "4"]
    log = open(os.path.join(work, "worker.log"), "w")
    process = subprocess.Popen(worker, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        sys.path.insert(0, work)
        os.environ.update(PEERS_BROKER=env["PEERS_BROKER"], PEERS_OUT=out)
        app = __import__(module)
        time.sleep(5)  # the worker connects and declares its queues
        start_ms = int((time.time() + lead) * 1000)
        step = spread * 1000 / max(jobs, 1)
        began = time.time()
        for i in range(jobs):
            due_ms = start_ms + int(step * i)
            if peer == "celery":
                from datetime import datetime, timezone
                eta = datetime.fromtimestamp(due_ms / 1000, tz=timezone.utc)
                app.fire.apply_async(args=(due_ms,), eta=eta)
            else:
                delay = max(0, due_ms - int(time.time() * 1000))
                app.fire.send_with_options(args=(due_ms,), delay=delay)
        schedule_per_s = jobs / (time.time() - began)
        deadline = time.time() + lead + spread + 120
        fired = 0
        while time.time() < deadline:
            with open(out) as lines:
                fired = sum(1 for _ in lines)
            if fired >= jobs:
                break
            time.sleep(1)
        with open(out) as lines:
            lateness = sorted(int(line) for line in lines if line.strip())
        return {
            "scenario": "peer-%s" % peer,
            "peer_version": version(peer),
            "jobs": jobs,
            "schedule_per_s": round(schedule_per_s),
            "fired": len(lateness),
            "lateness_ms_p50": percentile(lateness, 50),
            "lateness_ms_p99": percentile(lateness, 99),
            "lateness_ms_max": lateness[-1] if lateness else 0,
            "scheduling_outlasted_the_lead": schedule_per_s * lead < jobs,
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        management("DELETE", "/vhosts/" + vhost)


def version(peer):
    module = __import__(peer)
    return getattr(module, "__version__", "?")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--spread", type=float, default=10)
    parser.add_argument("--lead", type=float, default=45)
    parser.add_argument("--peers", default="celery,dramatiq")
    parser.add_argument("--ours", help="a file holding spot-bench's JSON line for the same burst")
    args = parser.parse_args()
    ours = None
    if args.ours:
        with open(args.ours) as line:
            ours = json.loads(line.read().strip().splitlines()[-1])
    for peer in args.peers.split(","):
        result = run(peer.strip(), args.jobs, args.spread, args.lead)
        if ours:
            # How many times ours: the rate ours / theirs, the lateness theirs / ours.
            result["ours_times_schedule_rate"] = round(
                ours["schedule_per_s"] / max(result["schedule_per_s"], 1), 1)
            for figure in ("lateness_ms_p50", "lateness_ms_p99", "lateness_ms_max"):
                result["ours_times_" + figure.replace("lateness_ms_", "precise_")] = round(
                    max(result[figure], 1) / max(ours[figure], 1), 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
