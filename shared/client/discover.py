"""`herd discover`: the herds (and Ollamas) announcing themselves on the LAN over mDNS / DNS-SD, one line each."""

from __future__ import annotations

import threading
import time

from herd.client.models import table
from herd.mdns import SERVICE_TYPES
from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceListener, Zeroconf


class _Found(ServiceListener):
    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # service name -> its type
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names[name] = type_

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.pop(name, None)


def discover(seconds: float, interface: str | None) -> str:
    """Browse for `seconds`, then one row per (address, port): what each announces."""
    zc = Zeroconf(interfaces=[interface] if interface else InterfaceChoice.All, ip_version=IPVersion.V4Only)
    found = _Found()
    try:
        browsers = [ServiceBrowser(zc, service_type, found) for service_type in SERVICE_TYPES]
        time.sleep(seconds)
        for browser in browsers:
            browser.cancel()
        with found.lock:
            names = dict(found.names)
        rows: dict[tuple[str, int], list[str]] = {}
        for name, type_ in sorted(names.items()):
            info = zc.get_service_info(type_, name, timeout=1500)
            if info is None:
                continue
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            kind = "herd" if type_.startswith("_herd") else "ollama"
            for address in info.parsed_addresses():
                key = (address, info.port or 0)
                if key in rows:
                    rows[key][4] += f",{kind}"
                    continue
                instance = name.removesuffix(f".{type_}")
                rows[key] = [
                    instance,
                    f"http://{address}:{info.port}",
                    txt.get("version", ""),
                    txt.get("auth", ""),
                    kind,
                ]
    finally:
        zc.close()
    if not rows:
        return "no herd found on the LAN"
    return table([["NAME", "URL", "VERSION", "AUTH", "SERVICES"], *rows.values()])
