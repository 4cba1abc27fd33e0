"""The demo's cloud: a local Mosquitto and a token list signed with ``edgebell cloud``.

Used by ``scripts/demo`` when mosquitto is installed; without it the demo's phones
come from the config file instead.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgebell.privacy import short_token
from testkit.cloud_peer import CloudPeer
from testkit.gateway import GATEWAY_ID, DaemonProcess
from testkit.mosquitto import CLOUD_USER, MosquittoBroker, mosquitto_binary
from testkit.pki import TestPki, make_client_cert

P = f"edgebell/{GATEWAY_ID}"
_TIMEOUT = 15.0


class LocalCloud:
    """A broker configured as docs/mqtt.md says, and the cloud backend connected to it."""

    def __init__(self, broker: MosquittoBroker, peer: CloudPeer, pki: TestPki) -> None:
        self.broker = broker
        self.peer = peer
        self.pki = pki
        self.ver: int | None = None

    @classmethod
    @contextlib.contextmanager
    def start_if_installed(cls, root: Path, pki: TestPki) -> Iterator[LocalCloud | None]:
        """The running local cloud, or None when mosquitto is not installed."""
        if mosquitto_binary() is None:
            yield None
            return
        identity = make_client_cert(pki.ca, root / "pki", CLOUD_USER)
        with (
            MosquittoBroker(root / "broker", ca=pki.ca, server=pki.server) as broker,
            CloudPeer(
                broker.host, broker.port, ca=pki.ca.cert, identity=identity, subscribe=[f"{P}/#"]
            ) as peer,
        ):
            yield cls(broker, peer, pki)

    @staticmethod
    def explain_missing(say: Callable[[str], None]) -> None:
        say("      mosquitto is not installed, so the phones come from the config file;")
        say("      install it to see the token list arrive over MQTT (apt-get install mosquitto).")

    def introduce(self, say: Callable[[str], None]) -> None:
        say(f"      A local Mosquitto plays the cloud's broker at {self.broker.url}: TLS, client")
        say("      certificates required, each gateway confined to its own topics by its CN.")
        say("      The cloud signs the list of phones that may hear this doorbell:")

    def config_section(self) -> dict[str, Any]:
        return {
            "url": self.broker.url,
            "ca_file": str(self.pki.ca.cert),
            "cert_file": str(self.pki.client.cert),
            "key_file": str(self.pki.client.key),
            "token_list_key": str(self.pki.token_list_key.public_key),
        }

    def publish_list(self, root: Path, phones: Sequence[str], say: Callable[[str], None]) -> None:
        """Sign the list with ``edgebell cloud sign-tokens``; publish it retained, answer hello."""
        entries = [
            {"token": t, "env": "sandbox", "user": f"user{n}", "registered_at": 0}
            for n, t in enumerate(phones, 1)
        ]
        source = root / "tokens.json"
        source.write_text(json.dumps(entries, indent=1))
        command = [
            sys.executable,
            "-m",
            "edgebell",
            "cloud",
            "sign-tokens",
            str(source),
            "--key",
            str(self.pki.token_list_key.private_key),
            "--gateway",
            GATEWAY_ID,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_TIMEOUT, check=True
        )
        jws = result.stdout.strip()
        say("      $ edgebell cloud sign-tokens tokens.json --key token-list.key \\")
        say(f"          --gateway {GATEWAY_ID}")
        say(f"      {result.stderr.strip()}: {jws[:40]}…")
        # The cloud's current list: published retained, and its answer to the gateway's hello.
        self.ver = self.peer.set_list(GATEWAY_ID, jws)
        say(f"      Published retained on {P}/tokens at {self.broker.url}; the cloud also")
        say(f"      answers the gateway's {P}/hello with it.")

    def wait_in_use(self, daemon: DaemonProcess, say: Callable[[str], None]) -> None:
        status = daemon.wait_status(lambda s: s["tokens"]["ver"] == self.ver, _TIMEOUT)
        say(f"      The daemon connected with its client certificate (CN {GATEWAY_ID}), got the")
        say("      retained list, verified its Ed25519 signature with cloud.token_list_key")
        say(f"      and now uses list ver {self.ver}: {status['tokens']['count']} phones.")

    def show_events(self, say: Callable[[str], None]) -> None:
        """What the cloud heard from the gateway, tokens shortened."""
        say(f"      What the cloud received on {P}/...:")
        for message in self.peer.messages():
            kind = message.topic[len(P) + 1 :]
            if kind == "tokens":
                continue
            document = message.json()
            if isinstance(document, dict) and isinstance(document.get("token"), str):
                document["token"] = short_token(document["token"])
            text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            say(f"        {kind:<9} {text if len(text) <= 100 else text[:99] + '…'}")
