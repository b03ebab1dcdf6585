"""Helpers for the real-browser tests (tests/test_browser.py): find Debian's Chromium and the
Playwright package, start a throwaway JupyterLab, save screenshots.

Playwright drives the system Chromium (``executable_path``) rather than a browser it downloads,
so `make test` needs only ``apt-get install chromium`` and ``pip install playwright``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import in_ci

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
"""Screenshots land here (gitignored) as well as under pytest's tmp dir."""

CHROMIUM_ENV = "CLIPATTR_CHROMIUM"
"""Path of a Chromium/Chrome binary to use instead of the system one."""

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def unavailable(reason: str):
    """Skip with ``reason`` on a user's machine; fail under CI=true (CI must run these tests)."""
    if in_ci():
        pytest.fail(f"{reason}; CI={os.environ.get('CI')} requires the browser tests to run "
                    "(`make test` installs them with apt-get and pip)")
    pytest.skip(f"{reason}; `make test` installs it when it can (set CI=true to make this a failure)")


def chromium_path() -> str | None:
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return override if Path(override).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium_and_playwright() -> tuple[object, str]:
    """(playwright.sync_api module, path of Chromium) or skip/fail with the reason."""
    exe = chromium_path()
    try:
        import playwright.sync_api as pw
    except ImportError:
        pw = None
    missing = []
    if pw is None:
        missing.append("the Python package playwright (pip install playwright)")
    if exe is None:
        missing.append(f"Chromium (apt-get install chromium, or set ${CHROMIUM_ENV})")
    if missing:
        unavailable("The real-browser test needs " + " and ".join(missing))
    return pw, exe


@contextmanager
def chromium(pw, exe: str, viewport=(1400, 1000)):
    """A headless Chromium page; the browser is closed on exit, also after a failure."""
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            yield context.new_page()
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# JupyterLab user settings for the test server: every cell rendered in the DOM (no windowing,
# so text below the fold can be read), no news pop-up, no update check.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


# Requests to the local server never go through an http_proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Lab:
    """A running JupyterLab: ``url(path)`` gives the tokenised address of a file under root."""

    def __init__(self, proc: subprocess.Popen, port: int, token: str, log: Path):
        self.proc, self.port, self.token, self.log = proc, port, token, log

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/lab/tree/{path}?token={self.token}"

    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.base}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with _LOCAL.open(req, timeout=10) as r:
            return json.loads(r.read())

    def api_post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.base}/api/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with _LOCAL.open(req, timeout=30) as r:
            return json.loads(r.read())

    def start_kernel_for(self, notebook: str, kernel: str = "python3") -> dict:
        """Start the notebook's session (as when reopening a notebook whose kernel runs), so the
        page connects to it instead of asking which kernel to start."""
        session = self.api_post("sessions", {"path": notebook, "name": notebook, "type": "notebook",
                                             "kernel": {"name": kernel}})
        if session["kernel"].get("execution_state") == "dead":
            pytest.fail(f"the {kernel} kernel died on start:\n{self.log_tail()}")
        return session

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@contextmanager
def jupyter_lab(root: Path, work: Path, env_drop=("CLIPATTR_STATIC",), timeout: float = 120.0):
    """Start ``jupyter lab`` from this interpreter's environment on 127.0.0.1, a free port and a
    random token, serving ``root``; all its state (settings, runtime files) under ``work``.
    The server and its kernels are stopped on exit, also after a failure."""
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        pytest.fail(f"{jupyter} is missing: install the package with `make install`")
    settings = work / "user-settings"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    # The kernel "python3" is this environment's (installed with --sys-prefix by `make install`):
    # JUPYTER_PATH comes before ~/.local/share/jupyter, so a user's own python3 cannot shadow it.
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                         env.get("JUPYTER_PATH")]))
    env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
    env["JUPYTER_CONFIG_DIR"] = str(work / "config")
    env["PYTHONUNBUFFERED"] = "1"
    port, token = free_port(), secrets.token_hex(24)
    log = work / "jupyter-lab.log"
    cmd = [str(jupyter), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.terminals_enabled=False", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={work / 'workspaces'}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--ServerApp.allow_root=True")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    lab = Lab(proc, port, token, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{lab.log_tail()}")
            try:
                lab.api("status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on port {port} within {timeout:.0f} s:\n{lab.log_tail()}")
                time.sleep(0.5)
        yield lab
    finally:
        stop_server(lab)


def stop_server(lab: "Lab", grace: float = 15.0) -> None:
    """Stop the server and every kernel it started: the kernels run in their own sessions, so
    they are collected first (by pid), the server is asked to shut down (it stops its kernels),
    then whatever is left of them is killed."""
    import psutil

    proc = lab.proc
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{lab.base}/api/shutdown", method="POST", data=b"",
                                         headers={"Authorization": f"token {lab.token}"})
            _LOCAL.open(req, timeout=5).close()
        except (urllib.error.URLError, OSError):
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for kid in kids:
        try:
            kid.kill()  # psutil checks the pid still is that process (no pid reuse)
        except psutil.Error:
            pass
    psutil.wait_procs(kids, timeout=5)


def clear_artifacts(pattern: str) -> None:
    """Remove a test's screenshots of an earlier run from test-artifacts/ (no stale failure shots)."""
    for old in ARTIFACTS.glob(pattern):
        old.unlink()


def save_screenshot(page, name: str, tmp_path: Path, **kwargs) -> list[Path]:
    """Screenshot ``page`` into test-artifacts/ and into pytest's tmp dir; prints both paths."""
    ARTIFACTS.mkdir(exist_ok=True)
    paths = [ARTIFACTS / name, tmp_path / name]
    page.screenshot(path=str(paths[0]), **kwargs)
    shutil.copyfile(paths[0], paths[1])
    print(f"screenshot: {paths[0]} (copy: {paths[1]})")
    return paths
