"""Launch `hftguard align` on two gloo processes N times and count failed launches.

    .venv/bin/python tools/ddp_exit_loop.py 100

The regression check for the two-process exit abort (a gloo worker thread destroyed during
interpreter shutdown: "terminate called without an active exception"): each launch sets the
environment torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT) and runs a 4-step tiny-random
alignment; any non-zero exit of either process is reported with its log directory. Prints one
JSON line at the end and a progress line every 10 launches.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = ["align", "--model", "tiny-random", "--defense", "sft", "--max-steps", "4"]
ARGS += ["--batch-size", "4", "--set", "train.checkpoint_every=2", "--set", "retain=''"]
LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_KEYS}
    base.update(OMP_NUM_THREADS="1", HFTGUARD_DIST_TIMEOUT="120")
    bad, t0 = [], time.time()
    for i in range(runs):
        d = Path(tempfile.mkdtemp(prefix="ddp-exit-"))
        port, procs = _port(), []
        for rank in range(2):
            env = dict(base, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
            with (d / f"r{rank}.out").open("w") as o, (d / f"r{rank}.err").open("w") as e:
                cmd = [sys.executable, "-m", "hftguard", *ARGS, "--out", str(d / "run")]
                procs.append(subprocess.Popen(cmd, env=env, stdout=o, stderr=e))
        codes = [p.wait(timeout=300) for p in procs]
        if any(codes):
            bad.append({"launch": i, "exit_codes": codes, "logs": str(d)})
            print(f"launch {i}: exit codes {codes}, logs in {d}", flush=True)
        else:
            shutil.rmtree(d)
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{runs} launches, {len(bad)} failed", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {"runs": runs, "failed": len(bad), "details": bad, "wall_s": round(time.time() - t0)}
        )
    )


if __name__ == "__main__":
    main()
