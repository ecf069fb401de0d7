"""A test signer in the style of Planetary Computer SAS tokens: appends a secret query string.

Importable as ``reliability_signer:sign`` (``tests/integration`` on PYTHONPATH) by the CLI and Ray workers.
"""

from __future__ import annotations

SECRET = "st=2026-01-01&se=2026-01-02&sp=rl&sig=Zm9vYmFyU2VjcmV0VG9rZW4xMjM0NTY"
TOKEN = "Zm9vYmFyU2VjcmV0VG9rZW4xMjM0NTY"


def sign(href: str) -> str:
    """The signed URL to open (never to be logged or stored)."""
    return f"{href}{'&' if '?' in href else '?'}{SECRET}"
