"""Run the CLI with one stream on a real pseudo-terminal, as a user sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_on_terminal(*args: str, stream: str = "stderr", env: dict[str, str] | None = None,
                    timeout: float = 600) -> tuple[int, str, str]:
    """``sgma-batch ARGS`` with ``stream`` ("stdout" or "stderr") on a pseudo-terminal, the other on a pipe.

    Returns (exit code, what the pipe got, what the terminal showed).
    """
    import pty

    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # keep the terminal's buffer empty, or the child blocks on a full pty
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    streams = {"stdout": slave, "stderr": subprocess.PIPE} if stream == "stdout" else \
        {"stdout": subprocess.PIPE, "stderr": slave}
    try:
        proc = subprocess.run([sys.executable, "-m", "cli.app", *args], text=True, check=False, cwd=REPO,
                              timeout=timeout, env={**os.environ, **(env or {})}, **streams)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    piped = proc.stderr if stream == "stdout" else proc.stdout
    return proc.returncode, piped, b"".join(chunks).decode(errors="replace")
