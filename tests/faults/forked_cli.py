"""Run with `python forked_cli.py`: imports keywatch once, then runs each job read from stdin (a JSON list of
{argv, env, cwd, out}) in a process of its own, forked from this warmed-up interpreter, as `python -m
keywatch ARGV` would run it: its own environment and directory, stdout and stderr to `out`, an exception
that escapes printed as a traceback with exit 1. Prints the exit codes as a JSON list."""

from __future__ import annotations

import json
import os
import sys
import traceback

PARALLEL = int(os.environ.get("KW_FORK_PARALLEL", "4"))


def _child(job: dict) -> None:
    fd = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ.clear()
    os.environ.update(job["env"])
    os.chdir(job["cwd"])
    sys.argv = ["keywatch", *job["argv"]]
    try:
        from keywatch.cli import main

        code = main(job["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def main() -> None:
    import keywatch.cli
    import keywatch.daemon  # noqa: F401  (what `run` imports, loaded once here)

    jobs = json.loads(sys.stdin.read())
    codes: dict[int, int] = {}
    running: dict[int, int] = {}
    pending = list(enumerate(jobs))
    while pending or running:
        while pending and len(running) < PARALLEL:
            i, job = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(job)
            running[pid] = i
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    print(json.dumps([codes[i] for i in range(len(jobs))]))


if __name__ == "__main__":
    main()
