"""LAN discovery (herd.mdns, `herd discover`) on the loopback interface only: a zeroconf browser finds a herd's
_herd._tcp and _ollama._tcp services with their TXT records, and sees them go when the herd stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from importlib import metadata

import pytest
from herd import mdns
from herd.config import load_settings
from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

from tests.conftest import HerdServer


class _Events(ServiceListener):
    def __init__(self) -> None:
        self.added: set[tuple[str, str]] = set()
        self.removed: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.added.add((type_, name))

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.removed.add((type_, name))


def _wait(check: object, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_plan_follows_the_bind_address_and_herd_mdns() -> None:
    assert mdns.plan(load_settings({"HERD_HOST": "127.0.0.1"}), auth_on=False) is None  # auto: not on loopback
    assert mdns.plan(load_settings({"HERD_HOST": "0.0.0.0", "HERD_MDNS": "off"}), auth_on=True) is None
    on = mdns.plan(load_settings({"HERD_HOST": "127.0.0.1", "HERD_MDNS": "on", "HERD_PORT": "9000"}), auth_on=True)
    assert on is not None and on.interfaces == ("127.0.0.1",) and on.addresses == ("127.0.0.1",) and on.port == 9000
    assert on.txt["auth"] == "on" and on.txt["api"] == "/v1" and on.txt["version"] == metadata.version("herd")
    lan = mdns.plan(load_settings({"HERD_HOST": "0.0.0.0"}), auth_on=False)
    assert lan is not None and lan.interfaces is None  # every interface
    assert all(not a.startswith("127.") for a in lan.addresses)


def test_a_browser_finds_the_herd_and_sees_it_leave(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    browser_zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    events = _Events()
    browsers = [ServiceBrowser(browser_zc, t, events) for t in mdns.SERVICE_TYPES]
    herd = HerdServer(redis_port, db=15, log_path=tmp_path_factory.mktemp("mdns") / "serve.log", HERD_MDNS="on")
    try:
        ours = f"port {herd.port}"
        _wait(lambda: {t for t, n in events.added if ours in n} == set(mdns.SERVICE_TYPES), "the services never showed")
        for type_, name in [(t, n) for t, n in events.added if ours in n]:
            info = browser_zc.get_service_info(type_, name, timeout=3000)
            assert info is not None and info.port == herd.port and info.parsed_addresses() == ["127.0.0.1"]
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            assert txt == {
                "version": metadata.version("herd"),
                "auth": "off",
                "api": "/v1",
                "ollama": "/api",
                "ui": "/v1/ui/chat",
            }

        listed = subprocess.run(
            [sys.executable, "-m", "herd", "discover", "--interface", "127.0.0.1", "--timeout", "4"],
            env=os.environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["NAME", "URL", "VERSION", "AUTH", "SERVICES"]
        (row,) = [r for r in rows if f"http://127.0.0.1:{herd.port}" in r]
        assert row.split()[-2:] == ["off", "herd,ollama"]
    finally:
        herd.stop()
    try:
        _wait(lambda: {t for t, n in events.removed if ours in n} == set(mdns.SERVICE_TYPES), "they never left")
    finally:
        for browser in browsers:
            browser.cancel()
        browser_zc.close()
