"""Warnings for a server that other machines can reach, or that reports usage statistics.

Streamlit reads .streamlit/config.toml from the working folder only. Started from
any other folder, it listens on every network interface and sends usage
statistics, so the app shows a warning in its sidebar.
"""

from __future__ import annotations

import ipaddress


def is_loopback(address: str | None) -> bool:
    """Tell whether ``address`` (server.address) accepts connections from this machine only."""
    if not address:
        return False  # unset: Streamlit listens on every interface
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name, which may resolve to a public interface


def exposure_warnings(address: str | None, port: int, gather_usage_stats: bool) -> list[str]:
    """Return one message per unsafe server setting, in Markdown; an empty list when none is unsafe."""
    warnings = []
    if not is_loopback(address):
        where = f"address {address}" if address else "every network interface"
        warnings.append(
            f"This server listens on {where}, port {port}: anyone who can reach it can start and delete "
            "runs, and there is no login. To keep it on this machine, start it from the repository folder "
            "with `make app`, which reads .streamlit/config.toml (server.address = 127.0.0.1)."
        )
    if gather_usage_stats:
        warnings.append(
            "Streamlit is sending usage statistics because .streamlit/config.toml was not read. "
            "Start the app from the repository folder with `make app` to turn them off."
        )
    return warnings
