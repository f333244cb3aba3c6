"""Where the server may send requests on a caller's behalf: judge and generator ``base_url`` (OpenAI-compatible
backends), ``webhook_url`` of runs, the experiment ``webhook``.

Policy (services/settings.py, environment variables in docs/deploy.md "Security"):

* link-local addresses (169.254.0.0/16, fe80::/10 — cloud metadata services live there: 169.254.169.254,
  fd00:ec2::254) and the metadata host names are refused unless ``TIEBREAK_OUTBOUND_ALLOW_LINK_LOCAL=1``;
* loopback (127.0.0.0/8, ::1, ``localhost``) and unspecified addresses (0.0.0.0) are refused unless
  ``TIEBREAK_OUTBOUND_ALLOW_LOOPBACK=1`` (local judges and tests turn it on);
* ``TIEBREAK_OUTBOUND_ALLOW`` (comma-separated host names, ``*.suffix`` patterns or CIDRs), when set, is an
  allow-list: every other host is refused. A host it names explicitly is allowed even if it is loopback.

Host names are resolved (``getaddrinfo``) and every address must pass. A name that does not resolve here is
judged by its name only (the judge may live on a Ray worker with other DNS). The check runs when a request
names the URL (422 naming the field) and again just before a webhook is sent.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

METADATA_NAMES = {"metadata.google.internal", "metadata", "metadata.azure.internal", "instance-data",
                  "instance-data.ec2.internal"}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EXTRA_METADATA = [ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32")]


@dataclass
class OutboundPolicy:
    allow: list[str] = field(default_factory=list)
    allow_loopback: bool = False
    allow_link_local: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> OutboundPolicy:
        return cls(list(getattr(settings, "outbound_allow", []) or []),
                   bool(getattr(settings, "outbound_allow_loopback", False)),
                   bool(getattr(settings, "outbound_allow_link_local", False)))

    def problem(self, url: str) -> str | None:
        """None if ``url`` may be called, else why not (with the setting that would allow it)."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower().rstrip(".")
        except ValueError as e:
            return f"is not a valid URL ({e})"
        if parts.scheme not in ("http", "https") or not host:
            return "must be an http(s) URL with a host"
        listed = self._listed(host)
        if self.allow and not listed:
            return (f"host {host!r} is not in the outbound allow-list (TIEBREAK_OUTBOUND_ALLOW="
                    f"{','.join(self.allow)})")
        if host in METADATA_NAMES and not self.allow_link_local:
            return f"host {host!r} is a cloud metadata service; refused (TIEBREAK_OUTBOUND_ALLOW_LINK_LOCAL=1)"
        for addr in _addresses(host):
            if listed and self._listed(host, addr):
                continue
            if addr.is_link_local or any(addr in n for n in EXTRA_METADATA):
                if not self.allow_link_local:
                    return (f"host {host!r} is a link-local/metadata address ({addr}); refused by default "
                            "(TIEBREAK_OUTBOUND_ALLOW_LINK_LOCAL=1 allows it)")
            elif addr.is_loopback or addr.is_unspecified:
                if not self.allow_loopback:
                    return (f"host {host!r} is a loopback address ({addr}); refused by default "
                            "(TIEBREAK_OUTBOUND_ALLOW_LOOPBACK=1 or TIEBREAK_OUTBOUND_ALLOW allows it)")
        return None

    def _listed(self, host: str, addr: IPAddress | None = None) -> bool:
        for entry in self.allow:
            e = entry.strip().lower()
            if "/" in e:
                try:
                    net = ipaddress.ip_network(e, strict=False)
                except ValueError:
                    continue
                cands = [addr] if addr is not None else _addresses(host)
                if cands and all(a in net for a in cands if a.version == net.version) and \
                        any(a.version == net.version for a in cands):
                    return True
            elif e.startswith("*."):
                if host.endswith(e[1:]):
                    return True
            elif host == e:
                return True
        return False


def _addresses(host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return []
    out: list[IPAddress] = []
    for info in infos:
        host_addr = info[4][0]  # an IP string for AF_INET/AF_INET6, the only families a host name resolves to
        if not isinstance(host_addr, str):
            continue
        try:
            out.append(ipaddress.ip_address(host_addr.split("%")[0]))
        except ValueError:
            pass
    return out


def model_spec_urls(spec: Any, where: str) -> list[tuple[str, str]]:
    """(field path, base_url) of a MODEL / judge spec (only OpenAI-compatible specs call a URL)."""
    if isinstance(spec, dict) and spec.get("backend") == "openai" and isinstance(spec.get("base_url"), str):
        return [(f"{where}.base_url", spec["base_url"])]
    return []


def check_model_spec(policy: OutboundPolicy, spec: Any, where: str) -> tuple[str, str] | None:
    """(field, message) for the first problem of an OpenAI-compatible spec: its base_url against ``policy`` and
    its ``api_key_env`` against the key bindings (judges/backends.py); None if fine."""
    from tiebreak.judges.backends import api_key_problem

    for f, url in model_spec_urls(spec, where):
        why = policy.problem(url)
        if why:
            return f, f"{f} {why}"
        why = api_key_problem(spec)
        if why:
            return f"{where}.api_key_env", why
    return None


def check_request(settings: Any, *, urls: Sequence[tuple[str, Any]] = (),
                  specs: Sequence[tuple[str, Any]] = ()) -> None:
    """Raise BadInput (422 naming the field) for the first URL or MODEL/judge spec the policy refuses."""
    from tiebreak.services.errors import BadInput

    policy = OutboundPolicy.from_settings(settings)
    for f, url in urls:
        if isinstance(url, str):
            why = policy.problem(url)
            if why:
                raise BadInput(f"{f} {why}", f)
    for where, spec in specs:
        got = check_model_spec(policy, spec, where)
        if got:
            raise BadInput(got[1], got[0])
