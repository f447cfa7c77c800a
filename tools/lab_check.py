"""Check that `make lab` serves the course: start JupyterLab headless, fetch its pages, stop it.

    make lab-check     # installs JupyterLab into .venv first, like `make lab`

Exit status 0 when the lab page loads and chapter 00 opens as a notebook (the .py through
jupytext, the .ipynb as it is); 1 otherwise, with the server's last log lines.
"""
from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def main() -> int:
    port, token = free_port(), secrets.token_hex(8)
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "notebooks/", "--no-browser", "--allow-root", f"--port={port}",
         f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    checks = {}
    try:
        deadline = time.time() + 120
        status, page = 0, b""
        while time.time() < deadline and server.poll() is None and status != 200:
            time.sleep(1)
            status, page = get(f"{base}/lab?token={token}")
        checks["the lab page loads"] = status == 200 and b"<title>JupyterLab</title>" in page
        for name in ("00_boxes_and_data.ipynb", "00_boxes_and_data.py"):
            code, body = get(f"{base}/api/contents/{name}?token={token}&content=0")
            checks[f"{name} opens as a notebook"] = code == 200 and json.loads(body or b"{}").get("type") == "notebook"
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"), timeout=5)
        server.wait(timeout=30)
    except OSError as err:  # the report below says what failed
        checks[f"the server answered ({err})"] = False
    finally:
        if server.poll() is None:
            server.kill()
    for name, ok in checks.items():
        print(("ok    " if ok else "FAIL  ") + name)
    if not all(checks.values()):
        print("".join(server.stdout.readlines()[-20:]) if server.stdout else "")
        return 1
    print(f"JupyterLab served the course on port {port} and stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
