"""A real ComfyUI server in a subprocess, with this repo installed as a custom-node pack, plus a tiny HTTP client.

The base directory holds models/, custom_nodes/<REGISTRY_ID> (a symlink to the repo, as a git clone would sit),
input/, output/, temp/ and user/. Server output goes to <base>/server.log, whose tail is attached to every error.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .comfy_env import REPO, comfyui_root
from .sage3_pack import REGISTRY_ID

LAUNCHER = Path(__file__).with_name("comfy_server_main.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base(base: Path) -> Path:
    """Creates the directory layout and links the pack in; returns the models directory."""
    for sub in ("models", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / REGISTRY_ID
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base / "models"


class ComfyServer:
    def __init__(self, base: Path, env: dict | None = None, extra_args: tuple = ()):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        root = comfyui_root()
        if root is None:
            raise RuntimeError("ComfyUI tree not found: run scripts/setup_env.sh or set COMFYUI_ROOT")
        prepare_base(self.base)
        cmd = [sys.executable, str(LAUNCHER), str(root), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", *self.extra_args]  # default DB path is inside the ComfyUI tree
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f}s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "--- server.log (tail) ---\n" + text[-chars:]

    def _request(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return raw

    def get(self, path: str):
        return json.loads(self._request(path))

    def get_bytes(self, path: str) -> bytes:
        return self._request(path)

    def run_prompt(self, prompt: dict, timeout: float) -> dict:
        """Queues an API-format prompt and waits for its /history entry; raises with the log tail on any error."""
        try:
            queued = json.loads(self._request("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex}))
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"/prompt refused the prompt: {exc.read().decode(errors='replace')}") from exc
        if queued.get("node_errors"):
            raise RuntimeError(f"node errors: {queued['node_errors']}")
        prompt_id = queued["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise RuntimeError(f"prompt failed: {json.dumps(status['messages'])[-3000:]}\n{self.log_tail()}")
                return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the prompt\n{self.log_tail()}")
            time.sleep(1.0)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f}s\n{self.log_tail()}")
