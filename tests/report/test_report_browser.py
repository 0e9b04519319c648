"""End to end: open report.html in headless Chromium, offline, and look at what it did.

* No request may leave the file: Chromium's net log must hold no request made by the page
  (Chromium's own background traffic, e.g. its updater, carries no file:// isolation key and is
  told apart; a control page that does load a remote image proves the detector sees page loads).
* The DOM Chromium built has every section, one <svg> per figure, no <script> element, and the
  hostile ensemble name as text.
* A screenshot is not blank and shows the figures' colours.

Chromium is Debian's ``chromium``; the session fixture installs it with apt-get when missing
(CI runs as root with network to the Debian mirrors) and skips only when that is impossible.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg
from report_checks import MALICIOUS, load_fixture, make_malicious

from fmaudit.report import render_report

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--net-log-capture-mode=Default"]
SECTIONS = ["summary", "entropy", "disagreement", "embeddings", "fisher", "contextual",
            "provenance"]
LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome:", "blob:")


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium executable, installed with apt-get if missing (skip if that cannot work)."""
    exe = _find_chromium()
    if exe:
        return exe
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # pytest-xdist workers share one apt: install under a lock, once.
    with open(Path(tempfile.gettempdir()) / "fmaudit-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        exe = _find_chromium()
        if exe:
            return exe
        try:
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
                subprocess.run(cmd, check=True, capture_output=True, timeout=900, env=env)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"could not install chromium: {exc} {detail[-300:]!r}")
    exe = _find_chromium()
    if not exe:
        pytest.skip("apt-get installed chromium but no executable was found")
    return exe


def run_chromium(exe: str, page: Path, work: Path, *extra: str) -> tuple[str, Path]:
    """Run headless Chromium on ``page``; return (stdout, net-log path)."""
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    netlog = work / f"netlog-{profile.name}.json"
    proc = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}",
                           *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, netlog


def _netlog_events(netlog: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    text = netlog.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # a log cut short when the browser exited: close it ourselves
        data = json.loads(text.rstrip().rstrip(",") + "]}")
    return data["constants"], data.get("events", [])


def page_requests(netlog: Path) -> list[str]:
    """Non-local URLs the page (not the browser itself) asked for, from Chromium's net log.

    A request made on behalf of a page carries the page's site: initiator "null" (file pages
    have an opaque origin) or a file:// network isolation key / site-for-cookies. Browser
    background requests have initiator "not an origin" and no file:// key.
    """
    constants, events = _netlog_events(netlog)
    names = {v: k for k, v in constants["logEventTypes"].items()}
    urls = []
    for event in events:
        params = event.get("params") or {}
        url = params.get("url")
        if names.get(event.get("type")) != "URL_REQUEST_START_JOB" or not url:
            continue
        if url.startswith(LOCAL_SCHEMES):
            continue
        from_page = (params.get("initiator") in ("null", "file://")
                     or "file://" in str(params.get("network_isolation_key", ""))
                     or "file://" in str(params.get("site_for_cookies", "")))
        if from_page:
            urls.append(url)
    return urls


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser")
    render_report(load_fixture("report_three.json"), root / "three")
    render_report(make_malicious(load_fixture("report_three.json")), root / "hostile")
    # The hostile page without its Content-Security-Policy: the markup alone must load nothing
    # (the CSP would otherwise block a stray load before it reached the network log).
    hostile = (root / "hostile" / "report.html").read_text()
    no_csp = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", hostile)
    assert no_csp != hostile
    (root / "hostile" / "no-csp.html").write_text(no_csp)
    control = root / "control.html"
    control.write_text('<!DOCTYPE html><p>control</p><img src="http://fmaudit-test.invalid/a.png">'
                       '<link rel="stylesheet" href="https://fmaudit-test.invalid/a.css">')
    return {"three": root / "three" / "report.html", "no_csp": root / "hostile" / "no-csp.html",
            "control": control, "root": root}


def test_detector_sees_a_page_that_loads_remote_files(chromium: str,
                                                      pages: dict[str, Path]) -> None:
    _, netlog = run_chromium(chromium, pages["control"], pages["root"], "--dump-dom")
    requested = page_requests(netlog)
    assert "http://fmaudit-test.invalid/a.png" in requested
    assert "https://fmaudit-test.invalid/a.css" in requested


def test_hostile_report_loads_nothing_and_runs_nothing(chromium: str,
                                                        pages: dict[str, Path]) -> None:
    dom, netlog = run_chromium(chromium, pages["no_csp"], pages["root"], "--dump-dom")
    assert page_requests(netlog) == []
    assert "<html" in dom
    assert not re.search(r"<\s*script", dom, re.IGNORECASE)
    assert not re.search(r"<\s*(img|iframe)\b", dom, re.IGNORECASE)
    # The browser shows the name as text: serialised back, it is escaped again.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert MALICIOUS not in dom
    assert re.findall(r'<section id="([^"]+)"', dom) == SECTIONS
    assert len(re.findall(r"<svg\b", dom)) == 7


def test_screenshot_is_not_blank(chromium: str, pages: dict[str, Path]) -> None:
    shot = pages["root"] / "shot.png"
    _, netlog = run_chromium(chromium, pages["three"], pages["root"],
                             f"--screenshot={shot}", "--window-size=1200,3000",
                             "--hide-scrollbars")
    assert page_requests(netlog) == []
    pixels = mpimg.imread(shot)[..., :3]  # floats in [0, 1]
    assert pixels.shape[:2] == (3000, 1200)
    non_white = (pixels < 0.95).any(axis=-1).mean()
    assert non_white > 0.01, f"only {non_white:.2%} of the screenshot is not white"
    # The inline figures were drawn: the second ensemble's vermillion (#D55E00) bars are there.
    vermillion = np.array([0xD5, 0x5E, 0x00]) / 255
    close = (np.abs(pixels - vermillion) < 0.12).all(axis=-1).sum()
    assert close > 500, f"{close} vermillion pixels: the SVG figures did not render"
