"""LAN discovery: an API process bound to a LAN address announces itself over mDNS / DNS-SD (`_herd._tcp.local.`, and
`_ollama._tcp.local.` for tools that browse for Ollama), with TXT records for its version, auth and API paths.

HERD_MDNS: `auto` (default) announces only when bound to a non-loopback address, `on` also on loopback (the tests),
`off` never. The announcement goes out on the interface of the bound address (every interface for 0.0.0.0)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from importlib import metadata

import msgspec
from herd.config import Settings
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger("herd.mdns")

SERVICE_TYPES = ("_herd._tcp.local.", "_ollama._tcp.local.")


class Plan(msgspec.Struct, frozen=True):
    """What to announce: on which interfaces (IP addresses, or None for all) and the records."""

    interfaces: tuple[str, ...] | None
    addresses: tuple[str, ...]
    port: int
    instance: str
    txt: dict[str, str]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_addresses() -> tuple[str, ...]:
    """This machine's non-loopback IPv4 addresses (what a 0.0.0.0 bind serves on)."""
    import ifaddr  # zeroconf's own dependency

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                found.append(ip.ip)
    return tuple(found)


def plan(settings: Settings, auth_on: bool) -> Plan | None:
    """The announcement for these settings, or None (HERD_MDNS=off, or auto on a loopback bind)."""
    host = settings.host
    if settings.mdns == "off" or (settings.mdns == "auto" and _loopback(host)):
        return None
    wildcard = host in ("0.0.0.0", "::", "")
    if wildcard:
        interfaces, addresses = None, _local_addresses()
    else:
        address = "127.0.0.1" if host == "localhost" else socket.gethostbyname(host)
        interfaces, addresses = (address,), (address,)
    txt = {
        "version": metadata.version("herd"),
        "auth": "on" if auth_on else "off",
        "api": "/v1",  # OpenAI's base path
        "ollama": "/api",
        "ui": "/v1/ui/chat",  # the AI SDK's UI message stream
    }
    instance = f"herd on {socket.gethostname()} port {settings.port}"[:63]
    return Plan(interfaces, addresses, settings.port, instance, txt)


class Announcer:
    """Registers the plan's services while the API runs; unregisters them (a goodbye packet) on close."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._zc: AsyncZeroconf | None = None
        self._infos: list[AsyncServiceInfo] = []

    async def start(self) -> None:
        p = self._plan
        interfaces = list(p.interfaces) if p.interfaces is not None else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        server = f"{socket.gethostname().split('.')[0]}.local."
        for service_type in SERVICE_TYPES:
            info = AsyncServiceInfo(
                service_type,
                f"{p.instance}.{service_type}",
                port=p.port,
                properties=p.txt,
                server=server,
                parsed_addresses=list(p.addresses),
            )
            # The first await queues the announcement; the task it returns ends once it has gone out.
            await (await self._zc.async_register_service(info, allow_name_change=True))
            self._infos.append(info)
        log.info("announced over mDNS as %r on %s", p.instance, ", ".join(p.addresses) or "no address")

    async def close(self) -> None:
        if self._zc is None:
            return
        for info in self._infos:
            await (await self._zc.async_unregister_service(info))  # the goodbye packets, sent
        await self._zc.async_close()
        self._zc = None
