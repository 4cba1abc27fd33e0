"""The demo's cloud: a local Mosquitto and the token registry (``edgebell cloud serve``).

Used by ``scripts/demo`` when mosquitto is installed: phones are registered and
the doorbell is shared over the registry's HTTP API, the registry publishes the
signed list, and drops the token Apple calls dead. Without mosquitto the demo's
phones come from the config file instead.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgebell.privacy import redact, short_token
from testkit.cloud_peer import CloudPeer
from testkit.gateway import GATEWAY_ID, DaemonProcess
from testkit.mosquitto import CLOUD_USER, MosquittoBroker, mosquitto_binary
from testkit.pki import TestPki, make_client_cert
from testkit.registry import RegistryProcess, write_registry_config

P = f"edgebell/{GATEWAY_ID}"
_TIMEOUT = 15.0
Say = Callable[[str], None]


class LocalCloud:
    """A broker configured as docs/mqtt.md says, the registry, and an observer of the topics."""

    def __init__(
        self, broker: MosquittoBroker, registry: RegistryProcess, peer: CloudPeer, pki: TestPki
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.peer = peer
        self.pki = pki

    @classmethod
    @contextlib.contextmanager
    def start_if_installed(cls, root: Path, pki: TestPki) -> Iterator[LocalCloud | None]:
        """The running local cloud, or None when mosquitto is not installed."""
        if mosquitto_binary() is None:
            yield None
            return
        registry_identity = make_client_cert(pki.ca, root / "pki", "registry")
        observer = make_client_cert(pki.ca, root / "pki", CLOUD_USER)
        with MosquittoBroker(
            root / "broker", ca=pki.ca, server=pki.server, more_cloud_users=("registry",)
        ) as broker:
            config, token, port = write_registry_config(
                root / "registry",
                pki=pki,
                broker=broker,
                identity=registry_identity,
                extra={"log_level": "info"},
            )
            with (
                RegistryProcess(config, token, port) as registry,
                CloudPeer(
                    broker.host,
                    broker.port,
                    ca=pki.ca.cert,
                    identity=observer,
                    subscribe=[f"{P}/#"],
                ) as peer,
            ):
                yield cls(broker, registry, peer, pki)

    @staticmethod
    def explain_missing(say: Say) -> None:
        say("      mosquitto is not installed, so the phones come from the config file;")
        say("      install it to see the token registry at work (apt-get install mosquitto).")

    def introduce(self, say: Say) -> None:
        say(f"      A local Mosquitto plays the cloud's broker at {self.broker.url}: TLS, client")
        say("      certificates required, each gateway confined to its own topics by its CN.")
        say("      The token registry (`edgebell cloud serve`) runs beside it, API at")
        say(f"      {self.registry.url}, on SQLite; the app calls it to register phones:")

    def call(self, say: Say, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call, shown as the app would make it (tokens shortened)."""
        answer = self.registry.api(method, path, body)
        shown = json.dumps(body) if body is not None else ""
        say(f"      {method} {redact(path)} {shown}".rstrip())
        text = redact(json.dumps(answer.document, ensure_ascii=False))
        say(f"        -> {answer.status} {text if len(text) <= 96 else text[:95] + '…'}")
        if answer.status != 200:
            raise RuntimeError(f"the registry refused {method} {path}: {answer.document}")
        document: dict[str, Any] = answer.document
        return document

    def register(self, alice: list[str], bob: list[str], say: Say) -> None:
        """alice's phones and her doorbell; bob's phone, and the doorbell shared with him."""
        for token in alice:
            self.call(say, "PUT", f"/v1/users/alice/phones/{token}", {"env": "sandbox"})
        self.call(say, "PUT", f"/v1/gateways/{GATEWAY_ID}", {"owner": "alice"})
        say("      alice shares the doorbell with bob, who has the app on his phone:")
        for token in bob:
            self.call(say, "PUT", f"/v1/users/bob/phones/{token}", {"env": "sandbox"})
        self.call(say, "PUT", f"/v1/gateways/{GATEWAY_ID}/shares/bob", {})
        say(f"      Each change signed a new list and published it retained on {P}/tokens.")

    def config_section(self) -> dict[str, Any]:
        return {
            "url": self.broker.url,
            "ca_file": str(self.pki.ca.cert),
            "cert_file": str(self.pki.client.cert),
            "key_file": str(self.pki.client.key),
            "token_list_key": str(self.pki.token_list_key.public_key),
        }

    def ver(self) -> int:
        ver: int = self.registry.api("GET", f"/v1/gateways/{GATEWAY_ID}").document["ver"]
        return ver

    def wait_in_use(self, daemon: DaemonProcess, say: Say) -> None:
        ver = self.ver()
        status = daemon.wait_status(lambda s: s["tokens"]["ver"] == ver, _TIMEOUT)
        say(f"      The daemon connected with its client certificate (CN {GATEWAY_ID}), got the")
        say("      registry's list, verified its Ed25519 signature with cloud.token_list_key")
        say(f"      and now uses list ver {ver}: {status['tokens']['count']} phones.")

    def wait_dropped(self, gone: str, daemon: DaemonProcess, say: Say) -> None:
        """The registry removes the dead token; the gateway takes the list without it."""
        deadline = time.monotonic() + _TIMEOUT
        while not self.registry.api("GET", "/v1/removed").document["removed"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the registry did not remove the dead token")
            time.sleep(0.05)
        say(f"      The gateway reported {short_token(gone)} on {P}/feedback; the registry")
        say("      checked it was in this gateway's list and that Apple's verdict is newer")
        say("      than the phone's registration, removed it and published a new list:")
        self.call(say, "GET", "/v1/removed")
        ver = self.ver()
        status = daemon.wait_status(lambda s: s["tokens"]["ver"] == ver, _TIMEOUT)
        say(f"      The daemon now uses list ver {ver}: {status['tokens']['count']} phones.")

    def show_events(self, say: Say) -> None:
        """What the registry made of the gateway's ring and delivery reports."""
        deadline = time.monotonic() + _TIMEOUT
        while True:
            rings = self.registry.api("GET", f"/v1/gateways/{GATEWAY_ID}/events").document["rings"]
            if all(r["delivery"] and r["delivery"]["final"] for r in rings) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.05)
        say(f"      The registry's record of the rings (GET /v1/gateways/{GATEWAY_ID}/events):")
        for r in reversed(rings):
            say(f"        {r['button']:<6} {r['summary']}")
