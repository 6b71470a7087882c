"""Runs a script in several real JAX processes on localhost (CPU collectives over gloo)."""

import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# Worker-script lines (after `pid` is set) that make process 1 record in `writes` every file it
# writes, moves, creates or removes (an audit hook): tests assert only process 0 writes.
AUDIT_WRITES = """
writes = []
if pid == 1:
    def _hook(event, args):
        if event == "open":  # open() gives a mode, os.open (e.g. mkstemp) flags
            mode, flags = args[1], args[2] or 0
            if (any(c in mode for c in "wax+") if mode else
                    flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                writes.append(("open", str(args[0])))
        elif event == "os.mkdir" and not os.path.isdir(args[0]):  # makedirs(exist_ok) is no write
            writes.append((event, str(args[0])))
        elif event in ("os.rename", "os.replace", "os.remove", "os.truncate", "shutil.rmtree"):
            writes.append((event, str(args[0])))
    sys.addaudithook(_hook)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script: str, args, n: int = 2, devices: int = 2, timeout: float = 120) -> list:
    """Starts `python -c script <process id> <port> *args` `n` times, each process with `devices`
    fake CPU devices, and returns their outputs (stdout + stderr). Fails the test, showing the
    output, if any process fails or the group overruns `timeout` seconds (all are then killed)."""
    env = dict(os.environ)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), port, *map(str, args)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    deadline, outs, late = time.monotonic() + timeout, [], False
    try:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                late = True
                break
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if late:  # what each process had printed says where it stood (communicate loses none)
        tails = [
            f"--- process {i} ---\n{(p.communicate()[0] or '')[-2000:]}"
            for i, p in enumerate(procs)
        ]
        raise AssertionError(f"processes overran {timeout:.0f} s\n" + "\n".join(tails))
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs
