"""How the updater authenticates to a fleet server (hawkBit DDI), in one place.

The DDI poller's own requests and the downloads of the artifacts it hands to the machine
both need the device's token and the fleet server's TLS trust. The token is configuration,
never journaled: the journal keeps only the artifact URL, and a download of a URL on the
fleet server gets the credentials again here when it starts (or resumes after a restart).
"""

from __future__ import annotations

import ssl
import urllib.parse
from pathlib import Path

from updater_fsm.config import Config
from updater_fsm.ops import local_package
from updater_fsm.ops.download import SourceAccess


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def authorization(config: Config) -> str | None:
    """The DDI ``Authorization`` header value (target token first), None without one."""
    if config.ddi_token:
        return f"TargetToken {config.ddi_token}"
    if config.ddi_gateway_token:
        return f"GatewayToken {config.ddi_gateway_token}"
    return None


def tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """A client context trusting ``ca_file`` only; None: the system's default trust."""
    if ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(ca_file))


def fleet_access(config: Config) -> SourceAccess:
    """Headers and TLS trust for requests to the fleet server."""
    auth = authorization(config)
    headers = (("Authorization", auth),) if auth else ()
    return SourceAccess(headers=headers, ssl=tls_context(config.ddi_ca_file))


def on_fleet_server(config: Config, url: str) -> bool:
    """``url`` has ``ddi_url``'s scheme, host and port: the only place the token may go."""
    return config.ddi_url is not None and _origin(url) == _origin(config.ddi_url)


def access_for(config: Config, url: str) -> SourceAccess:
    """What a download of ``url`` needs: the fleet credentials when ``url`` is on the fleet
    server, nothing otherwise — a token is never sent to another host (a redirect elsewhere
    drops it too, aiohttp's rule); for a ``file://`` URL, where it may point
    (``local_package_dirs``) and how large it may be."""
    if local_package.is_file_url(url):
        return SourceAccess(
            local_dirs=config.local_package_dirs,
            local_max_bytes=local_package.largest_file(config.max_package_bytes),
        )
    return fleet_access(config) if on_fleet_server(config, url) else SourceAccess()
