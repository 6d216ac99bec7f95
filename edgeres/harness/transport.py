"""How the device harness reaches a board (SSH) or a phone (adb): one small interface.

Both transports drive the system's own client binaries (``ssh``, ``adb``) through
``subprocess`` with a timeout on every call, so a dead network or a wedged device ends in a
:class:`~edgeres.errors.UserError` naming the host and what failed, never in a hang.

Why files travel over ``ssh ... 'cat > file'`` rather than ``scp``: boards often run Dropbear
or an OpenSSH without the SFTP subsystem, which modern ``scp`` needs; a shell and ``cat`` are
always there, and the upload is renamed into place only once complete.

>>> with SSHTransport("root@board.local", workdir="/tmp/edgeres") as t:  # doctest: +SKIP
...     t.put(Path("model.tflite"), "/tmp/edgeres/model.tflite")
...     rc, out, err = t.run(["uname", "-m"], timeout_s=10)
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Protocol, runtime_checkable

from edgeres.errors import UserError
from edgeres.paths import write_bytes_atomic

COPY_TIMEOUT_S = 120.0


@runtime_checkable
class Transport(Protocol):
    """A device the harness can copy files to and run commands on."""

    kind: str  # "ssh" | "adb"
    name: str  # for messages: "ssh root@board:22", "adb R58M12345"
    workdir: str  # absolute directory on the device for the harness's files

    def put(self, local: Path, remote: str) -> None: ...

    def run(self, cmd: list[str], timeout_s: float) -> tuple[int, str, str]: ...

    def get(self, remote: str, local: Path) -> None: ...

    def close(self) -> None: ...


def _require(tool: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"'{tool}' was not found on PATH: {install}")
    return path


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


class _Base:
    kind = "?"
    name = "?"

    def __enter__(self):  # noqa: ANN204 - returns the concrete transport
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every call is its own client process."""

    def _exec(
        self, argv: list[str], timeout_s: float, what: str, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run a client command; UserError (naming ``what`` and the timeout) if it overruns."""
        try:
            proc = subprocess.run(argv, input=stdin if stdin is not None else b"",
                                  capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserError(
                f"{self.name}: {what} did not finish within the {timeout_s:g} s timeout"
            ) from exc
        return proc.returncode, proc.stdout, proc.stderr


class SSHTransport(_Base):
    """A Linux board over SSH, with the system ``ssh`` client in batch mode (keys, no prompts).

    ``host`` may be ``user@host``. New host keys are accepted on first use
    (``StrictHostKeyChecking=accept-new``) and then checked, in ``known_hosts`` when given
    (else the user's own). ``options`` are extra ``-o`` settings (``"Key=value"``);
    ``config_file`` replaces ``~/.ssh/config`` (``Path("/dev/null")`` ignores it).

    ``multiplex``: one SSH connection carries every call (``ControlMaster``), so a benchmark's
    handful of copies and commands pay for one handshake, not one each; :meth:`close` (or
    leaving the ``with`` block) ends it, and it ends by itself 30 s after its last use.
    """

    kind = "ssh"

    def __init__(
        self,
        host: str,
        port: int = 22,
        user: str | None = None,
        key: Path | None = None,
        workdir: str = "/tmp/edgeres",
        connect_timeout_s: float = 5.0,
        known_hosts: Path | None = None,
        options: tuple[str, ...] = (),
        config_file: Path | None = None,
        multiplex: bool = True,
    ) -> None:
        self.ssh = _require("ssh", "install an SSH client (Debian/Ubuntu: apt-get install "
                                   "openssh-client; macOS and Windows 10+ ship one)")
        if "@" in host and user is None:
            user, host = host.split("@", 1)
        if not host:
            raise UserError("no SSH host given: set [device] host = \"user@board\" in the "
                            "target profile or pass --host")
        self.host, self.port, self.user = host, int(port), user
        self.workdir = workdir
        self.connect_timeout_s = connect_timeout_s
        dest = f"{user}@{host}" if user else host
        self.name = f"ssh {dest}:{self.port}"
        opts = [
            "BatchMode=yes",
            f"ConnectTimeout={max(1, round(connect_timeout_s))}",
            "ConnectionAttempts=1",
            "StrictHostKeyChecking=accept-new",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            "LogLevel=ERROR",
        ]
        if known_hosts is not None:
            opts.append(f"UserKnownHostsFile={known_hosts}")
        self._control_dir: str | None = None
        if multiplex:  # a private directory: the socket grants access to the session
            self._control_dir = tempfile.mkdtemp(prefix="edgeres-ssh-")
            # if close() is never called: the master exits after ControlPersist, the
            # directory goes when this object does
            weakref.finalize(self, shutil.rmtree, self._control_dir, True)
            opts += ["ControlMaster=auto", f"ControlPath={self._control_dir}/%C",
                     "ControlPersist=30"]
        opts += list(options)
        self._base = [self.ssh, "-p", str(self.port), "-T"]
        if config_file is not None:
            self._base += ["-F", str(config_file)]
        if key is not None:
            self._base += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        for o in opts:
            self._base += ["-o", o]
        self._base += ["--", dest]

    def close(self) -> None:
        """End the shared connection (if any) and remove its socket directory."""
        if self._control_dir is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([*self._base[:-2], "-O", "exit", self._base[-1]],
                           capture_output=True, timeout=5, check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    def _ssh(self, remote_cmd: str, timeout_s: float, what: str,
             stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        rc, out, err = self._exec([*self._base, remote_cmd], timeout_s, what, stdin)
        if rc == 255:  # ssh's own failure: connection, authentication, host key
            why = _explain_ssh(err.decode(errors="replace"))
            raise UserError(f"{self.name}: {what} failed: {why}")
        return rc, out, err

    def run(self, cmd: list[str], timeout_s: float) -> tuple[int, str, str]:
        """Run ``cmd`` on the board; (exit code, stdout, stderr).

        The board's own ``timeout`` (coreutils or busybox) also bounds the command when it
        has one, so that a runaway command does not outlive the connection.
        """
        inner = shlex.join(cmd)
        secs = max(1, int(timeout_s + 0.999))
        remote = (f"if timeout 1 true >/dev/null 2>&1; then exec timeout {secs} {inner}; "
                  f"else exec {inner}; fi")
        start = time.monotonic()
        rc, out, err = self._ssh(remote, timeout_s + self.connect_timeout_s + 2,
                                 f"command `{inner}`")
        if rc in (124, 143) and time.monotonic() - start >= timeout_s * 0.9:
            raise UserError(f"{self.name}: command `{inner}` did not finish within the "
                            f"{timeout_s:g} s timeout")
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def put(self, local: Path, remote: str) -> None:
        """Copy ``local`` to ``remote`` (parent directories made; renamed into place)."""
        data = Path(local).read_bytes()
        tmp = f"{remote}.part"
        cmd = (f"mkdir -p {shlex.quote(posixpath.dirname(remote) or '.')} && "
               f"cat > {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(remote)}")
        rc, _, err = self._ssh(cmd, COPY_TIMEOUT_S, f"copying {Path(local).name} to {remote}",
                               stdin=data)
        if rc != 0:
            raise UserError(f"{self.name}: copying {local} to {remote} failed: "
                            f"{_tail(err.decode(errors='replace'))}")

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` from the board to ``local`` (written atomically)."""
        rc, out, err = self._ssh(f"cat {shlex.quote(remote)}", COPY_TIMEOUT_S,
                                 f"copying {remote} from the board")
        if rc != 0:
            raise UserError(f"{self.name}: cannot read {remote}: "
                            f"{_tail(err.decode(errors='replace'))}")
        write_bytes_atomic(Path(local), out)


def _explain_ssh(stderr: str) -> str:
    """ssh's last message plus what to do about it."""
    low = stderr.lower()
    hints = [
        ("connection refused", "nothing listens on that port: is sshd running on the board?"),
        ("timed out", "the board did not answer: check the address, network and firewall"),
        ("no route to host", "the board is not reachable from this machine"),
        ("could not resolve hostname", "the host name does not resolve: use an IP address"),
        ("permission denied", "authentication failed: install your public key on the board "
                              "(ssh-copy-id) or pass the key to use"),
        ("host key verification failed", "the board's host key changed: remove the old "
                                         "entry with ssh-keygen -R HOST"),
    ]
    for needle, hint in hints:
        if needle in low:
            return f"{_tail(stderr, 1)} ({hint})"
    return _tail(stderr)


# adb's own failures (as opposed to a failing command on the phone).
_ADB_FAILURES = (
    "no devices/emulators found", "device offline", "device unauthorized", "adb: device '",
    "device not found", "more than one device", "cannot connect to daemon",
    "failed to start daemon",
)


class ADBTransport(_Base):
    """An Android device over ``adb`` (push / shell / pull); ``serial`` picks one of several."""

    kind = "adb"

    def __init__(self, serial: str | None = None, workdir: str = "/data/local/tmp/edgeres",
                 connect_timeout_s: float = 10.0) -> None:
        self.adb = _require("adb", "install Android platform-tools (Debian/Ubuntu: apt-get "
                                   "install adb; or https://developer.android.com/tools/"
                                   "releases/platform-tools) and enable USB debugging")
        self.serial = serial or None
        self.workdir = workdir
        self.connect_timeout_s = connect_timeout_s
        self.name = f"adb {serial}" if serial else "adb (default device)"
        self._base = [self.adb] + (["-s", serial] if serial else [])

    def _adb(self, args: list[str], timeout_s: float, what: str) -> tuple[int, str, str]:
        rc, out, err = self._exec([*self._base, *args], timeout_s, what)
        text_out, text_err = out.decode(errors="replace"), err.decode(errors="replace")
        msg = (text_err + text_out).lower()
        if rc != 0 and any(n in msg for n in _ADB_FAILURES):
            raise UserError(f"{self.name}: {what} failed: {_tail(text_err or text_out)} "
                            "(check `adb devices`; pass the serial of the phone to use)")
        return rc, text_out, text_err

    def run(self, cmd: list[str], timeout_s: float) -> tuple[int, str, str]:
        inner = shlex.join(cmd)
        return self._adb(["shell", inner], timeout_s, f"command `{inner}`")

    def put(self, local: Path, remote: str) -> None:
        self._adb(["shell", "mkdir", "-p", posixpath.dirname(remote)], self.connect_timeout_s
                  + 5, "creating " + posixpath.dirname(remote))
        rc, out, err = self._adb(["push", str(local), remote], COPY_TIMEOUT_S,
                                 f"pushing {Path(local).name}")
        if rc != 0:
            raise UserError(f"{self.name}: pushing {local} to {remote} failed: "
                            f"{_tail(err or out)}")

    def get(self, remote: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(local).with_name(f".{Path(local).name}.part")
        rc, out, err = self._adb(["pull", remote, str(tmp)], COPY_TIMEOUT_S, f"pulling {remote}")
        if rc != 0:
            tmp.unlink(missing_ok=True)
            raise UserError(f"{self.name}: pulling {remote} failed: {_tail(err or out)}")
        os.replace(tmp, local)
