"""Fixtures of the tests that deploy the shipped install under a real systemd."""

from tests.e2e.deploy_site import device_api, site

__all__ = ["device_api", "site"]
