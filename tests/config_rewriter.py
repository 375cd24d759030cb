"""Config writers for the atomic_config kill test, forked from one process that has imported
atomic_config (a new interpreter per writer cost ~0.15 s of CPU for its imports, not for what is
tested). Run as ``python config_rewriter.py PATH``; on stdin, ``start N`` forks a writer that
rewrites PATH with generations N, N+1, ... until killed and answers ``ready PID``; ``reap PID``
waits for it and answers ``reaped PID STATUS``."""
import os
import sys

from atomic_config import AtomicConfigParser


def expected_payload(generation: int) -> str:
    return ("%08d" % generation) * (2000 + (generation * 7919) % 6000)


def rewrite_forever(path: str, start: int) -> None:
    i = start
    while True:
        cfg = AtomicConfigParser()
        cfg.add_section("device")
        cfg.set("device", "generation", str(i))
        cfg.set("device", "payload", expected_payload(i))
        cfg.write(path)
        i += 1


def serve(path: str) -> None:
    for line in sys.stdin:
        word, _, arg = line.partition(" ")
        if word == "start":
            pid = os.fork()
            if pid == 0:
                try:
                    rewrite_forever(path, int(arg))
                finally:
                    os._exit(1)
            print("ready", pid, flush=True)
        elif word == "reap":
            _, status = os.waitpid(int(arg), 0)
            print("reaped", arg.strip(), status, flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
