"""Device harness over a REAL sshd on 127.0.0.1 (started here), and the adb transport.

The "board" is this machine: the runner runs with this venv's python, reached through the
system ssh client and an OpenSSH server on a free high port with a throwaway host key and
authorized key. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_harness_local import tiny_models

from edgeres.errors import UserError
from edgeres.harness import (
    ADBTransport,
    SSHTransport,
    Transport,
    bench_android,
    bench_on_device,
    check_on_device,
    open_transport,
    parse_benchmark_model,
)
from edgeres.harness.runner_io import runner_path
from edgeres.runtime.litert import run_tflite
from edgeres.runtime.onnxruntime import run_onnx
from edgeres.targets import Device, load_target

SSHD = "/usr/sbin/sshd"
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _missing_tools() -> str | None:
    for tool in (SSHD, shutil.which("ssh-keygen"), shutil.which("ssh")):
        if tool is None or not os.access(tool, os.X_OK):
            return "OpenSSH (openssh-server: /usr/sbin/sshd, ssh-keygen; openssh-client) missing"
    return None


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):  # noqa: ANN201 - dict of paths and the port
    """An sshd in the foreground (``-D -e``) on 127.0.0.1:<free port>, killed at teardown."""
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, timeout=30)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        Path("/run/sshd").mkdir(mode=0o755)  # privilege-separation dir the sshd service makes
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress {LOCALHOST}\nPort {port}\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin yes\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nLogLevel ERROR\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode(errors='replace')}")
        with socket.socket() as s:
            if s.connect_ex((LOCALHOST, port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not listen within 15 s")
    yield {"port": port, "dir": d}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def transport(sshd, key: str = "client_key", **kw) -> SSHTransport:  # noqa: ANN001
    d = sshd["dir"]
    return SSHTransport(LOCALHOST, port=kw.pop("port", sshd["port"]), user="root",
                        key=d / key, workdir=str(d / "device"), connect_timeout_s=5,
                        known_hosts=d / "known_hosts", config_file=Path("/dev/null"), **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_models(tmp_path_factory.mktemp("models"))


def test_bench_over_ssh(sshd, models) -> None:
    tfl, _ = models
    target = load_target("arm-cpu-tflite")
    with transport(sshd) as t:
        assert isinstance(t, Transport)
        r = bench_on_device(tfl, target, t, threads=(1, 2), runs=5, python=sys.executable)
    assert r.where == f"ssh root@{LOCALHOST}:{sshd['port']}"
    assert r.runtime == "litert-xnnpack" and r.runtime_version.startswith("ai_edge_litert ")
    assert [s.threads for s in r.latency] == [1, 2]
    for s in r.latency:
        assert s.runs == 5 and 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.max_ms
        assert s.peak_rss_delta_bytes > 0
    assert r.platform["machine"] == platform.machine()  # the "board" is this host
    assert r.model_sha256 == hashlib.sha256(tfl.read_bytes()).hexdigest()
    device = sshd["dir"] / "device"  # what was copied arrived intact
    assert (device / "bench_runner.py").read_bytes() == runner_path().read_bytes()
    assert (device / tfl.name).read_bytes() == tfl.read_bytes()
    assert not list(device.glob("*.part"))


def test_check_over_ssh_matches_local_runtimes(sshd, models) -> None:
    tfl, onx = models
    rng = np.random.default_rng(5)
    xq = rng.integers(-128, 127, size=(2, 16, 16, 8), dtype=np.int8)
    xf = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    with transport(sshd) as t:
        got_q = check_on_device(tfl, [xq], t, kernels="ref", python=sys.executable)
        got_f = check_on_device(onx, [xf], t, python=sys.executable)
    np.testing.assert_array_equal(got_q[0], run_tflite(tfl, [xq], kernels="ref")[0])
    # the "device" is this host: the same file on the same kernels (exact=False)
    np.testing.assert_array_equal(got_f[0], run_onnx(onx, [xf], exact=False)[0])


def test_open_transport_from_profile(sshd, models) -> None:
    tfl, _ = models
    d = sshd["dir"]
    dev = Device("ssh", f"root@{LOCALHOST}:{sshd['port']}", str(d / "profile-device"))
    target = dataclasses.replace(load_target("arm-cpu-onnx"), device=dev)
    with open_transport(target, key=d / "client_key", known_hosts=d / "known_hosts",
                        config_file=Path("/dev/null")) as t:
        assert (t.port, t.user, t.host, t.workdir) == (sshd["port"], "root", LOCALHOST,
                                                       str(d / "profile-device"))
        rc, out, _ = t.run(["echo", "hello board"], timeout_s=10)
        assert (rc, out) == (0, "hello board\n")
        with pytest.raises(UserError, match="needs a .onnx file"):
            bench_on_device(tfl, target, t, python=sys.executable)
    with pytest.raises(UserError, match="runs on this host"):
        open_transport(load_target("arm-cpu-onnx"))


def test_unreachable_port_fails_fast(sshd, models) -> None:
    tfl, _ = models
    t = transport(sshd, port=free_port())  # nothing listens there
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"ssh root@{LOCALHOST}:\d+: .*Connection refused"):
        bench_on_device(tfl, load_target("arm-cpu-tflite"), t, python=sys.executable)
    assert time.monotonic() - start < 10


def test_wrong_key_is_an_auth_error(sshd) -> None:
    t = transport(sshd, key="other_key", multiplex=False)
    with pytest.raises(UserError, match="Permission denied.*authentication failed"):
        t.run(["true"], timeout_s=10)


def test_command_timeout(sshd) -> None:
    start = time.monotonic()
    with transport(sshd) as t, pytest.raises(UserError, match=r"within the 1 s timeout"):
        t.run(["sleep", "30"], timeout_s=1)
    assert time.monotonic() - start < 10


def test_missing_device_python(sshd, models) -> None:
    tfl, _ = models
    with transport(sshd) as t, pytest.raises(UserError, match="was not found on the device"):
        bench_on_device(tfl, load_target("arm-cpu-tflite"), t, runs=1,
                        python="/nonexistent/python3")


def test_runner_error_is_reported(sshd, tmp_path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"garbage")
    with transport(sshd) as t, pytest.raises(UserError, match="runner on ssh .*cannot load"):
        bench_on_device(bad, load_target("arm-cpu-tflite"), t, runs=1, python=sys.executable)


# -- adb --------------------------------------------------------------------------------------


def test_missing_client_binaries(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="'adb' was not found on PATH: install Android "
                                        "platform-tools"):
        ADBTransport("R58M123")
    with pytest.raises(UserError, match="'ssh' was not found on PATH: install an SSH client"):
        SSHTransport(LOCALHOST)


FAKE_ADB = """#!/bin/sh
# adb stand-in: the "phone" is a directory; shell commands run here.
[ "$1" = "-s" ] && shift 2
case "$1" in
  push) cp "$2" "$3" ;;
  pull) cp "$2" "$3" ;;
  shell) shift; sh -c "$*" ;;
  *) echo "error: unknown command $1" >&2; exit 1 ;;
esac
"""

# The log format of LiteRT's benchmark_model (tensorflow/lite/tools/benchmark).
BENCHMARK_LOG = (
    "INFO: count=5 first=910 curr=850 min=840 max=910 avg=866.4 std=25\n"
    "INFO: count=50 first=820 curr=800 min=790 max=1200 avg=830.5 std=60 p5=795 median=810 "
    "p95=1100\n"
    "INFO: Inference timings in us: Init: 15000, First inference: 910, Warmup (avg): 866.4, "
    "Inference (avg): 830.5\n"
    "INFO: Memory footprint delta from the start of the tool (MB): init=2.5 overall=3.25\n"
)
FAKE_BENCHMARK_MODEL = f"#!/bin/sh\ncat >&2 <<'EOF'\n{BENCHMARK_LOG}EOF\n"


def test_bench_android_with_adb(monkeypatch, tmp_path, models) -> None:
    """ADBTransport drives a fake ``adb`` (push/shell/pull on this machine) and a fake
    ``benchmark_model``: checks the commands, the parsing and the missing-binary error."""
    tfl, _ = models
    bin_dir, phone = tmp_path / "bin", tmp_path / "phone"
    bin_dir.mkdir()
    phone.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB)
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    target = load_target("arm-cpu-tflite")
    t = ADBTransport("FAKE123", workdir=str(phone / "work"))
    binary = str(phone / "benchmark_model")
    with pytest.raises(UserError, match="benchmark_model is not on the device.*adb push"):
        bench_android(tfl, target, t, binary=binary)
    Path(binary).write_text(FAKE_BENCHMARK_MODEL)
    Path(binary).chmod(0o755)
    r = bench_android(tfl, target, t, threads=(1, 4), runs=50, binary=binary)
    assert (phone / "work" / tfl.name).read_bytes() == tfl.read_bytes()
    assert r.where == "adb FAKE123" and [s.threads for s in r.latency] == [1, 4]
    s = r.latency[0]
    assert (s.runs, s.median_ms, s.min_ms, s.mean_ms, s.max_ms) == (50, 0.81, 0.79, 0.8305, 1.2)
    assert (s.load_ms, s.first_ms, s.p90_ms) == (15.0, 0.91, None)
    assert s.peak_rss_delta_bytes == int(3.25 * 2**20)
    t.get(str(phone / "work" / tfl.name), tmp_path / "back" / "m.tflite")
    assert (tmp_path / "back" / "m.tflite").read_bytes() == tfl.read_bytes()


def test_parse_benchmark_model_old_format() -> None:
    """Older builds print no percentiles; the timed run's statistics are the last before the
    timings line."""
    log = ("count=3 first=100 curr=90 min=90 max=100 avg=95 std=4\n"
           "count=20 first=80 curr=81 min=79 max=99 avg=82.5 std=3\n"
           "Inference timings in us: Init: 500, First inference: 100, Warmup (avg): 95, "
           "Inference (avg): 82.5\n")
    p = parse_benchmark_model(log)
    assert (p["count"], p["min_us"], p["median_us"], p["avg_us"]) == (20, 79.0, None, 82.5)
    with pytest.raises(UserError, match="no 'Inference timings in us' line"):
        parse_benchmark_model("ERROR: Could not open 'x.tflite'.")
