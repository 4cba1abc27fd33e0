"""Hostile input: what radio noise, a banner loop and a 50 MB MQTT message cost the daemon.

Each scenario runs the real daemon (subprocess) against the APNs stand-in, a pty
receiver and, for MQTT, a real Mosquitto; then reads the daemon's peak resident
memory (VmHWM) from /proc, counts its log lines, and checks that a frame sent after
the hostile input still rings. The figures are quoted in docs/operations.md
("Bounds on every input").

    .venv/bin/python benchmarks/hostile_input.py [--noise-mb 50] [--banners 50000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from common import bench_pki, machine, proc_rss_mb, scratch, wait_until

from edgebell.apns.credentials import PROBE_TOKEN
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import RFLINK_BANNER, FakeReceiver
from testkit.gateway import (
    FRONT_FRAME,
    GATEWAY_ID,
    TOPIC,
    DaemonProcess,
    random_token,
    token_auth,
    write_config,
)
from testkit.mosquitto import CLOUD_USER, MosquittoBroker
from testkit.pki import TestPki, make_client_cert
from testkit.standin_thread import StandInThread

CHUNK = 64 * 1024


def _rang(apns: StandInThread, count: int) -> None:
    wait_until(
        lambda: len([r for r in apns.received() if r.token != PROBE_TOKEN]) >= count,
        300,
        "the ring after the hostile input",
    )


def _gateway(
    root: Path, pki: TestPki, apns: StandInThread, receiver: FakeReceiver, **kw: Any
) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    return write_config(
        root,
        port=str(receiver.path),
        apns_url=apns.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=[random_token()],
        **kw,
    )


def radio_noise(root: Path, pki: TestPki, apns: StandInThread, megabytes: int) -> dict[str, Any]:
    """``megabytes`` of random bytes on the serial line at log_level debug, then one frame."""
    with FakeReceiver(root / "ttyNOISE", answer_pings=True) as receiver:
        files = _gateway(root / "noise", pki, apns, receiver, overrides={"log_level": "debug"})
        with DaemonProcess(files) as daemon:
            assert daemon.proc is not None
            before = proc_rss_mb(daemon.proc.pid)
            rng = os.urandom(CHUNK)
            started = time.monotonic()
            for n in range(megabytes * 1024 * 1024 // CHUNK):
                receiver.write(rng[n % 7 :] + rng[: n % 7])
            # A line end first: the frame must not share a line with the last of the noise.
            receiver.write(b"\r\n")
            receiver.write_line(FRONT_FRAME.format(n=1))
            _rang(apns, 1)
            elapsed = time.monotonic() - started
            status = daemon.status()
            peak = proc_rss_mb(daemon.proc.pid, "VmHWM")
            daemon.stop()
        log_lines = len(daemon.log_text().splitlines())
    return {
        "noise_mb": megabytes,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "bad_frames": status["radio"]["bad_frames"],
        "log_lines": log_lines,
        "seconds_to_ring_after_noise": round(elapsed, 1),
    }


def banner_loop(root: Path, pki: TestPki, apns: StandInThread, banners: int) -> dict[str, Any]:
    """A firmware printing its banner ``banners`` times (log_level info), then one frame."""
    with FakeReceiver(root / "ttyBANNER", answer_pings=True) as receiver:
        files = _gateway(root / "banner", pki, apns, receiver, overrides={"log_level": "info"})
        with DaemonProcess(files) as daemon:
            assert daemon.proc is not None
            for _ in range(banners // 1000):
                receiver.write(RFLINK_BANNER * 1000)
            receiver.write_line(FRONT_FRAME.format(n=2))
            _rang(apns, 2)
            peak = proc_rss_mb(daemon.proc.pid, "VmHWM")
            daemon.stop()
        text = daemon.log_text()
    return {
        "banners": banners,
        "banner_log_lines": sum("receiver announced itself" in ln for ln in text.splitlines()),
        "log_lines": len(text.splitlines()),
        "peak_rss_mb": peak,
    }


def mqtt_oversize(root: Path, pki: TestPki, apns: StandInThread, megabytes: int) -> dict[str, Any]:
    """A ``megabytes`` message on P/cmd and on P/tokens, then a ping that must be answered."""
    prefix = f"edgebell/{GATEWAY_ID}"
    with (
        MosquittoBroker(root / "broker", ca=pki.ca, server=pki.server) as broker,
        FakeReceiver(root / "ttyMQTT", answer_pings=True) as receiver,
    ):
        cloud_id = make_client_cert(pki.ca, pki.dir / "mqtt", CLOUD_USER)
        cloud_section = {
            "url": broker.url,
            "ca_file": str(pki.ca.cert),
            "cert_file": str(pki.client.cert),
            "key_file": str(pki.client.key),
            "token_list_key": str(pki.token_list_key.public_key),
        }
        files = _gateway(root / "mqtt", pki, apns, receiver, overrides={"cloud": cloud_section})
        with (
            CloudPeer(broker.host, broker.port, ca=pki.ca.cert, identity=cloud_id) as cloud,
            DaemonProcess(files) as daemon,
        ):
            assert daemon.proc is not None
            daemon.wait_status(lambda s: s["cloud"]["connected"], timeout=30)
            before = proc_rss_mb(daemon.proc.pid)
            huge = b"[" * (megabytes * 1024 * 1024)
            cloud.publish(f"{prefix}/cmd", huge, timeout=300)
            cloud.publish(f"{prefix}/tokens", huge, timeout=300)
            cloud.publish(f"{prefix}/cmd", json.dumps({"id": "after", "cmd": "ping"}))
            cloud.wait_message(f"{prefix}/cmd/reply", lambda m: m["id"] == "after", 60)
            peak = proc_rss_mb(daemon.proc.pid, "VmHWM")
            daemon.stop()
    return {"message_mb": megabytes, "rss_before_mb": before, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise-mb", type=int, default=50)
    parser.add_argument("--banners", type=int, default=50_000)
    parser.add_argument("--mqtt-mb", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = scratch("edgebell-hostile-")
    pki = bench_pki(root)
    with StandInThread.for_pki(pki, topic=TOPIC) as apns:
        result = {
            "machine": machine(),
            "radio_noise": radio_noise(root, pki, apns, args.noise_mb),
            "banner_loop": banner_loop(root, pki, apns, args.banners),
            "mqtt_oversize": mqtt_oversize(root, pki, apns, args.mqtt_mb),
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, figures in result.items():
            if name != "machine":
                print(name, figures)


if __name__ == "__main__":
    main()
