"""The device's default controller id and the attributes it reports to the fleet server."""

from __future__ import annotations

import hashlib
import hmac
import socket
from pathlib import Path

#: Fixed application key: the id is ``HMAC-SHA256(machine-id, key)``, as systemd's
#: ``sd_id128_get_machine_app_specific`` advises — stable per device, but the machine id
#: itself (which other software uses as a secret) never leaves the device.
_APP_KEY = b"tope-updater/ddi-controller-id/1"
MACHINE_ID = Path("/etc/machine-id")
_MODEL_FILES = (
    Path("/proc/device-tree/model"),
    Path("/sys/firmware/devicetree/base/model"),
    Path("/sys/class/dmi/id/product_name"),
)


def default_controller_id(machine_id_file: Path = MACHINE_ID) -> str:
    """``tope-`` and 16 hex digits derived from ``/etc/machine-id`` (the host name when the
    file is missing or empty: a container or a half-built image)."""
    try:
        seed = machine_id_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        seed = ""
    if not seed:
        seed = "hostname:" + socket.gethostname()
    digest = hmac.new(seed.encode(), _APP_KEY, hashlib.sha256).hexdigest()
    return f"tope-{digest[:16]}"


def device_model(configured: str | None) -> str:
    """The configured model, else the device tree's or DMI's product name, else ``unknown``."""
    if configured:
        return configured
    for path in _MODEL_FILES:
        try:
            text = path.read_bytes()[:256].decode("utf-8", "replace").strip("\x00 \n")
        except OSError:
            continue
        if text:
            return text
    return "unknown"
