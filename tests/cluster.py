"""Test hosts on one machine: network namespaces joined by a bridge, each with its own address and
an sshd, reachable by host name, so the deepspeed launcher (pdsh over ssh), gloo and Ray see
several hosts. They share the file system, which stands for a cluster's shared storage.

    with TestCluster(2, slots=1) as c:
        c.hostfile          # "lrtXXXXh0 slots=1" ...
        c.env()             # PATH with an ssh that knows the test key and the hosts
        c.popen(1, [...])   # a process on host 1 (in its network namespace)
        c.kill_host(1)      # every process of host 1 killed and its link cut

Everything is owned by a supervisor process (``python -m tests.cluster supervise``) that the
fixture starts: it builds the hosts, reports them on stdout and tears everything down when its
stdin closes, which happens when the fixture exits and also when the process that started it
is killed. Teardown removes every namespace (and the processes in it), link, sshd, ``/etc/hosts``
entry and state file; :func:`leftovers` lists what remains of a cluster (nothing, after it).
Needs root, ``ip`` (iproute2), ``sshd``, ``ssh``, ``ssh-keygen`` and ``pdsh``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "lrt"
STATE = Path("/run/lorarec-test-cluster")
HOSTS_FILE = Path("/etc/hosts")
MARK = "# lorarec-test-cluster"
TOOLS = ("ip", "sshd", "ssh", "ssh-keygen", "pdsh")


def missing_tools() -> list[str]:
    found = {t: shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin") for t in TOOLS}
    return [t for t, p in found.items() if p is None]


def available() -> str | None:
    """Why test hosts cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, sshd)"
    missing = missing_tools()
    if missing:
        return f"test hosts need {', '.join(missing)} (make test installs them)"
    return None


@dataclass
class Host:
    name: str
    addr: str
    netns: str


def sh(*cmd: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    out = subprocess.run(full, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {out.stderr.strip() or out.returncode}")
    return out


@contextmanager
def locked():
    """One cluster set up or torn down at a time (``/etc/hosts``, the subnet choice)."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def free_subnet() -> ipaddress.IPv4Network:
    used = sh("ip", "-o", "-4", "addr", "show").stdout
    for third in range(1, 255):
        net = ipaddress.ip_network(f"10.231.{third}.0/24")
        if f" 10.231.{third}." not in used:
            return net
    raise RuntimeError("no free 10.231.X.0/24 subnet for test hosts")


# --------------------------------------------------------------------------- the supervisor


class Supervisor:
    """Builds the hosts and tears them down: runs in its own process."""

    def __init__(self, n: int, slots: int, workdir: Path):
        self.token = secrets.token_hex(3)
        self.n, self.slots, self.dir = n, slots, workdir
        self.bridge = f"{PREFIX}{self.token}b"
        self.hosts: list[Host] = []
        self.sshd: list[subprocess.Popen] = []
        self.state = STATE / f"{self.token}.json"

    def save(self) -> None:
        state = {
            "token": self.token,
            "pid": os.getpid(),
            "bridge": self.bridge,
            "netns": [h.netns for h in self.hosts],
            "links": [f"{PREFIX}{self.token}v{i}" for i in range(self.n)],
            "dir": str(self.dir),
        }
        self.state.write_text(json.dumps(state))

    def build(self) -> dict:
        with locked():
            cleanup_stale()
            net = free_subnet()
            gateway = str(net.network_address + 1)
            self.hosts = [
                Host(
                    f"{PREFIX}{self.token}h{i}",
                    str(net.network_address + 10 + i),
                    f"{PREFIX}{self.token}h{i}",
                )
                for i in range(self.n)
            ]
            self.save()  # before anything exists: teardown reads it
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{gateway}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            for i, h in enumerate(self.hosts):
                veth = f"{PREFIX}{self.token}v{i}"
                sh("ip", "netns", "add", h.netns)
                sh(
                    "ip",
                    "link",
                    "add",
                    veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    h.netns,
                )
                sh("ip", "link", "set", veth, "master", self.bridge, "up")
                sh("ip", "addr", "add", f"{h.addr}/24", "dev", "eth0", ns=h.netns)
                sh("ip", "link", "set", "eth0", "up", ns=h.netns)
                sh("ip", "link", "set", "lo", "up", ns=h.netns)
                sh("ip", "route", "add", "default", "via", gateway, ns=h.netns)
            entries = "".join(f"{h.addr} {h.name} {MARK} {self.token}\n" for h in self.hosts)
            with open(HOSTS_FILE, "a") as f:
                f.write(entries)
        self.start_sshd()
        self.write_files()
        return {
            "token": self.token,
            "gateway": gateway,
            "hosts": [h.__dict__ for h in self.hosts],
            "dir": str(self.dir),
        }

    def start_sshd(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "id_ed25519"):
            if not (d / key).exists():
                sh(
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "lorarec-test",
                    "-f",
                    str(d / key),
                )
        shutil.copyfile(d / "id_ed25519.pub", d / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        for h in self.hosts:
            conf = d / f"sshd_{h.name}.conf"
            conf.write_text(
                f"ListenAddress {h.addr}\nPort 22\nHostKey {d / 'host_key'}\n"
                f"PidFile {d / f'sshd_{h.name}.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                "LogLevel ERROR\n"
            )
            self.sshd.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", h.netns, sshd, "-D", "-e", "-f", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=open(d / f"sshd_{h.name}.log", "w"),
                )
            )
        deadline = time.monotonic() + 30
        for h in self.hosts:  # sshd answers on the host's address
            while True:
                try:
                    with socket.create_connection((h.addr, 22), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sshd on {h.name} ({h.addr}) did not start") from None
                    time.sleep(0.1)

    def write_files(self) -> None:
        d = self.dir
        names = " ".join(h.name for h in self.hosts)
        (d / "ssh_config").write_text(
            f"Host {names}\n  User root\n  IdentityFile {d / 'id_ed25519'}\n"
            "  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n"
        )
        bindir = d / "bin"
        bindir.mkdir(exist_ok=True)
        ssh = bindir / "ssh"
        ssh.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d / "ssh_config"} "$@"\n')
        ssh.chmod(0o755)
        (d / "hostfile").write_text("".join(f"{h.name} slots={self.slots}\n" for h in self.hosts))

    def teardown(self) -> None:
        for p in self.sshd:
            if p.poll() is None:
                p.kill()
            p.wait()
        with locked():
            teardown_state(
                json.loads(self.state.read_text())
                if self.state.exists()
                else {
                    "token": self.token,
                    "bridge": self.bridge,
                    "netns": [h.netns for h in self.hosts],
                    "links": [f"{PREFIX}{self.token}v{i}" for i in range(self.n)],
                }
            )
            self.state.unlink(missing_ok=True)


def namespace_pids(netns: str) -> list[int]:
    out = sh("ip", "netns", "pids", netns, check=False)
    return [int(x) for x in out.stdout.split()] if out.returncode == 0 else []


def kill_namespace(netns: str) -> None:
    """Kill every process of ``netns`` until none is left."""
    for _ in range(50):
        pids = namespace_pids(netns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"processes of {netns} survive SIGKILL: {namespace_pids(netns)}")


def teardown_state(state: dict) -> None:
    """Remove what ``state`` names: its namespaces with their processes, links, hosts entries."""
    for netns in state.get("netns", []):
        if (Path("/run/netns") / netns).exists():
            kill_namespace(netns)
            sh("ip", "netns", "del", netns, check=False)
        shutil.rmtree(scratch(netns), ignore_errors=True)
    for link in [*state.get("links", []), state.get("bridge")]:
        if link and Path(f"/sys/class/net/{link}").exists():
            sh("ip", "link", "del", link, check=False)
    token = state["token"]
    lines = HOSTS_FILE.read_text().splitlines(keepends=True)
    kept = [x for x in lines if f"{MARK} {token}" not in x]
    if kept != lines:
        with open(HOSTS_FILE, "w") as f:  # in place: /etc/hosts may be a bind mount
            f.write("".join(kept))


def scratch(name: str) -> Path:
    """A host's own scratch directory (short: Ray's socket paths must fit 107 bytes)."""
    return Path("/tmp") / name


def cleanup_stale() -> None:
    """Tear down clusters whose supervisor is gone (killed before it could clean up)."""
    for path in STATE.glob("*.json"):
        state = json.loads(path.read_text())
        try:
            os.kill(state["pid"], 0)
            continue  # alive: its own
        except ProcessLookupError:
            pass
        teardown_state(state)
        path.unlink(missing_ok=True)


def leftovers(token: str) -> list[str]:
    """What remains of cluster ``token``: namespaces, their mounts, links, hosts entries,
    processes started with its files, its state file."""
    found = []
    found += [f"netns {x}" for x in sh("ip", "netns", "list").stdout.split() if token in x]
    found += [f"mount {x.split()[1]}" for x in open("/proc/mounts") if token in x]
    found += [f"link {x}" for x in os.listdir("/sys/class/net") if token in x]
    found += [f"hosts entry {x.strip()}" for x in open(HOSTS_FILE) if token in x]
    if (STATE / f"{token}.json").exists():
        found.append(f"state {STATE / f'{token}.json'}")
    found += [f"scratch {p}" for p in Path("/tmp").glob(f"{PREFIX}{token}h*")]
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if f"{PREFIX}{token}".encode() in cmd and b"tests.cluster" not in cmd:
                found.append(f"process {pid}: {cmd.decode(errors='replace')[:120]}")
    return found


def supervise(n: int, slots: int, workdir: Path) -> int:
    sup = Supervisor(n, slots, workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's ^C: teardown still runs
    try:
        info = sup.build()
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the fixture closes it, or its process dies
    except Exception as e:  # reported to the fixture; teardown below still runs
        print(json.dumps({"error": str(e)}), flush=True)
    finally:
        sup.teardown()
    return 0


# --------------------------------------------------------------------------- the fixture


class TestCluster:
    """N test hosts with ``slots`` each, for a ``with`` block (see the module docstring)."""

    __test__ = False  # not a test class for pytest

    def __init__(self, n: int, workdir: Path, slots: int = 1):
        self.n, self.slots, self.dir = n, slots, Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.hosts: list[Host] = []

    def __enter__(self) -> TestCluster:
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cluster",
                "supervise",
                str(self.n),
                str(self.slots),
                str(self.dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a ^C to the test does not reach it before teardown
            cwd=root,
        )
        line = self.proc.stdout.readline()
        info = json.loads(line) if line else {"error": "the supervisor exited"}
        if "error" in info:
            self.__exit__(None, None, None)
            raise RuntimeError(f"test hosts: {info['error']}")
        self.token = info["token"]
        self.gateway = info["gateway"]
        self.hosts = [Host(**h) for h in info["hosts"]]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=120)
            self.proc = None

    @property
    def hostfile(self) -> Path:
        return self.dir / "hostfile"

    def write_hostfile(self, path: Path, hosts: list[int], slots: int | None = None) -> Path:
        path.write_text(
            "".join(f"{self.hosts[i].name} slots={slots or self.slots}\n" for i in hosts)
        )
        return path

    def env(self, base: dict | None = None) -> dict[str, str]:
        """An environment whose ``ssh`` (for pdsh and the launcher) reaches the hosts."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.dir / 'bin'}:{env.get('PATH', '')}"
        return env

    def run(self, i: int, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.hosts[i].netns, *cmd], **kw)

    def popen(self, i: int, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[i].netns, *cmd], **kw)

    def scratch(self, i: int) -> Path:
        """Host ``i``'s own scratch directory (removed with the hosts)."""
        return scratch(self.hosts[i].name)

    def pids(self, i: int) -> list[int]:
        return namespace_pids(self.hosts[i].netns)

    def kill_host(self, i: int) -> None:
        """Host ``i`` lost as a power cut loses it: every process on it frozen at once
        (SIGSTOP: none runs a handler, writes a file or sends a packet again), its link cut,
        then every process killed."""
        h = self.hosts[i]
        for _ in range(3):  # processes forked meanwhile are frozen by the next round
            for pid in namespace_pids(h.netns):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
        sh("ip", "link", "set", "eth0", "down", ns=h.netns, check=False)
        kill_namespace(h.netns)


def main(argv: list[str]) -> int:
    if argv[:1] == ["supervise"]:
        return supervise(int(argv[1]), int(argv[2]), Path(argv[3]))
    if argv[:1] == ["cleanup"]:  # by hand, after a supervisor was killed with SIGKILL
        with locked():
            cleanup_stale()
        return 0
    print("usage: python -m tests.cluster supervise N SLOTS DIR | cleanup", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
