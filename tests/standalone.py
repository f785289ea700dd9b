"""A Spark standalone cluster on 127.0.0.1 for tests: one master, N workers, real processes.

Started from the Spark distribution that pyspark ships (``bin/spark-class`` with the Master and
Worker classes: the pip package has no ``sbin/start-master.sh``). Stops exactly the processes it
started, and only those.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def spark_env() -> dict[str, str]:
    """Environment for cluster processes: our interpreter on every worker, loopback only."""
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_MASTER_HOST": LOOPBACK,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_NO_DAEMONIZE": "1",
    })
    return env


@dataclass
class StandaloneCluster:
    master_url: str
    web_url: str
    master: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    def alive_workers(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as resp:
            state = json.load(resp)
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def wait_for_workers(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in [self.master, *self.workers]:
                if proc.poll() is not None:
                    raise RuntimeError(f"cluster process {proc.args[-1]} exited with {proc.returncode}; "
                                       f"see logs in {self.log_dir}")
            try:
                if len(self.alive_workers()) >= count:
                    return
            except OSError:
                pass  # master web UI not up yet
            time.sleep(0.5)
        raise RuntimeError(f"{count} workers did not register with {self.master_url} in {timeout:.0f}s; "
                           f"see logs in {self.log_dir}")

    def kill_worker(self, index: int) -> int:
        """SIGKILL one worker process (fault injection); returns its PID."""
        proc = self.workers[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return proc.pid

    def stop(self) -> None:
        for proc in [*self.workers, self.master]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.master]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _spawn(cls: str, args: list[str], log: Path, work_dir: Path) -> subprocess.Popen:
    cmd = [str(SPARK_HOME / "bin" / "spark-class"), cls, *args]
    with open(log, "wb") as out:  # the child keeps its own handle; the log stays for post-mortems
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=spark_env(), cwd=work_dir,
                                start_new_session=True)


@contextmanager
def standalone_cluster(work_dir: Path, workers: int = 2, cores: int = 1,
                       memory: str = "2g") -> Iterator[StandaloneCluster]:
    """Start a master and ``workers`` workers on 127.0.0.1; stop them on exit."""
    work_dir.mkdir(parents=True, exist_ok=True)
    port, web_port = free_port(), free_port()
    master = _spawn("org.apache.spark.deploy.master.Master",
                    ["--host", LOOPBACK, "--port", str(port), "--webui-port", str(web_port)],
                    work_dir / "master.log", work_dir)
    cluster = StandaloneCluster(f"spark://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{web_port}", master,
                                log_dir=work_dir)
    try:
        for i in range(workers):
            wdir = work_dir / f"worker-{i}"
            wdir.mkdir(exist_ok=True)
            cluster.workers.append(_spawn(
                "org.apache.spark.deploy.worker.Worker",
                ["--host", LOOPBACK, "--cores", str(cores), "--memory", memory,
                 "--work-dir", str(wdir), "--webui-port", str(free_port()), cluster.master_url],
                work_dir / f"worker-{i}.log", work_dir))
        cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.stop()
