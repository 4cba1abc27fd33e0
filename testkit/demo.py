"""``scripts/demo``: the real daemon end to end on local stand-ins, narrated for a newcomer."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from edgebell.privacy import short_token
from testkit.apns_standin import ReceivedPush
from testkit.demo_cloud import LocalCloud
from testkit.demo_home import LocalHome
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    BACK_FRAME,
    FRONT_FRAME,
    KEY_ID,
    TEAM_ID,
    TOPIC,
    DaemonProcess,
    random_token,
    token_auth,
    write_config,
)
from testkit.pki import make_test_pki
from testkit.standin_thread import StandInThread


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, total: int, text: str) -> None:
    say(f"\n[{n}/{total}] {text}")


def show_push(push: ReceivedPush) -> None:
    alert = json.loads(push.payload)["aps"]["alert"]
    say(
        f"    APNs <- {push.status} {push.reason or 'OK':<14} {short_token(push.token):<10}"
        f" {push.headers.get('apns-priority', '')}  {alert['title']!r}: {alert['body']!r}"
        f"  collapse-id {push.headers.get('apns-collapse-id', '')[:8]}…"
    )


class Watcher:
    """Prints what the stand-in answered since the last look."""

    def __init__(self, apns: StandInThread, daemon: DaemonProcess) -> None:
        self.apns = apns
        self.daemon = daemon
        self.seen = 0

    def wait_and_show(self, count: int, timeout: float = 10.0) -> None:
        target = self.seen + count
        try:
            # Pushes to phones only: the daemon's credentials check goes to no device.
            self.apns.wait_for(
                lambda s: sum(1 for r in s.responses if r.to_device) >= target, timeout
            )
        except AssertionError:
            # What the daemon did instead is the first thing anyone needs to see.
            print(self.daemon.log_text(), file=sys.stderr)
            raise
        for push in self.apns.responses()[self.seen : target]:
            show_push(push)
        self.seen = target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the demo directory")
    args = parser.parse_args(argv)
    total = 6
    root = Path(tempfile.mkdtemp(prefix="edgebell-demo-"))
    try:
        code = _run(root, total)
    finally:
        # The demo's keys are throwaway, but keys all the same: none stays in /tmp
        # unless asked for.
        if args.keep:
            say(f"\nDemo files kept in {root} (keys, config, the daemon's log and database)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say("\nDone. Next: `scripts/test` runs the whole test suite.")
    return 0 if code == 0 else 1


def _run(root: Path, total: int) -> int:
    say("edgebell demo: a doorbell press on a serial port becomes an Apple push, end to end.")
    say(f"Everything runs on this machine, in {root}; nothing is sent to Apple.")

    step(1, total, "Generating throwaway keys: a test CA, a TLS cert for the APNs stand-in,")
    say("      and an APNs auth key (.p8) the daemon signs its ES256 JWTs with.")
    pki = make_test_pki(root / "pki", key_id=KEY_ID, team_id=TEAM_ID)

    with StandInThread.for_pki(pki, topic=TOPIC) as apns:
        step(2, total, f"APNs stand-in listening on {apns.url} (TLS + HTTP/2).")
        say("      It answers as Apple documents and refuses a request whose JWT it cannot verify.")
        alice, bob = [random_token(), random_token()], [random_token()]
        phones = alice + bob
        gone = alice[1]
        apns.set(token_errors={gone: (410, "Unregistered")})
        say(
            "      Three phones: alice's two and bob's; alice's second phone "
            f"({short_token(gone)}) uninstalled"
        )
        say("      the app, so 'Apple' will answer 410 Unregistered for it.")

        with (
            FakeReceiver(root / "ttyRFLink", answer_pings=True) as receiver,
            LocalCloud.start_if_installed(root, pki) as cloud,
            LocalHome.start_if_installed(root) as home,
        ):
            step(3, total, f"Simulated RFLink receiver plugged in at {receiver.path}")
            say("      (a pseudo-terminal; the daemon opens it like /dev/serial/by-id/...).")
            if cloud is None:
                LocalCloud.explain_missing(say)
            else:
                cloud.introduce(say)
                cloud.register(alice, bob, say)
            if home is not None:
                home.introduce(say)
            files = write_config(
                root,
                port=str(receiver.path),
                apns_url=apns.url,
                ca_file=pki.ca.cert,
                auth=token_auth(pki.auth_key),
                tokens=phones if cloud is None else [],
                overrides={"log_level": "info"}
                | ({} if cloud is None else {"cloud": cloud.config_section()})
                | ({} if home is None else {"home_assistant": home.config_section()}),
            )
            step(4, total, f"Starting `edgebell run --config {files.config}`")
            daemon = DaemonProcess(files)
            daemon.start()
            receiver.write_line(b"20;00;Nodo RadioFrequencyLink - RFLink Gateway V1.1 - R46;")
            watcher = Watcher(apns, daemon)
            say("      The daemon is up: receiver open, APNs connection warm.")
            if cloud is not None:
                cloud.wait_in_use(daemon, say)
            if home is not None:
                home.show_discovery(daemon, say)

            step(5, total, "Someone presses the front door button.")
            say(
                "      The transmitter repeats its frame 3 times;"
                " edgebell rings once, on the first:"
            )
            for n in range(3):
                receiver.write_line(FRONT_FRAME.format(n=n + 1))
            watcher.wait_and_show(3)
            say("      -> one push per phone; the dead token is now suppressed and reported.")
            if cloud is not None:
                cloud.wait_dropped(gone, daemon, say)
            time.sleep(0.3)
            say("\n      A press of the back door (a SelectPlus chime button):")
            receiver.write_line(BACK_FRAME.format(n=4))
            watcher.wait_and_show(2)
            say("      -> only the two live phones this time: the dead token is not tried.")
            say("\n      `edgebell ring front` rings by hand (ignores debounce and cooldown):")
            result = daemon.cli("ring", "front")
            say(textwrap.indent(result.stdout.strip(), "      $ "))
            watcher.wait_and_show(2)

            step(6, total, "`edgebell status`:")
            daemon.wait_status(lambda s: s["outbox"]["pending"] == 0)
            result = daemon.cli("status")
            say(textwrap.indent(result.stdout.rstrip(), "      "))
            say(
                f"      (exit code {result.returncode}: 0 healthy, 1 degraded, 3 not running,"
                " 4 cannot tell)"
            )
            if cloud is not None:
                cloud.show_events(say)
            if home is not None:
                home.show_events(say)

            say("\nStopping the daemon with SIGTERM (as systemd does):")
            code = daemon.stop()
            say(f"      exit code {code}")
            say("\nThe daemon's own log of all this:")
            for line in daemon.log_text().splitlines():
                say(f"      | {line}")
    return code


if __name__ == "__main__":
    sys.exit(main())
