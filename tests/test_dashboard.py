from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback(tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(study_name="shown", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = _free_port()
    cli = Path(__file__).parents[1] / "cli.py"
    proc = subprocess.Popen(
        [sys.executable, str(cli), "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        for _ in range(60):
            time.sleep(0.5)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
        assert body is not None and '"shown"' in body
        with socket.socket() as s:  # bound to loopback only
            s.settimeout(1)
            addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
            for addr in addrs:
                assert s.connect_ex((addr, port)) != 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_refuses_a_missing_storage(tmp_path):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    res = CliRunner().invoke(app, ["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"])
    assert res.exit_code == 1 and "does not exist yet" in res.output
    assert not (tmp_path / "none.db").exists()


def test_dashboard_on_a_busy_port_says_so(tmp_path):
    from typer.testing import CliRunner

    from fnnp_opt.cli import app

    url = f"sqlite:///{tmp_path}/d.db"
    optuna.create_study(study_name="s", storage=url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["dashboard", "--storage", url, "--port", str(port)])
    assert res.exit_code == 1 and "pass another --port" in res.output
