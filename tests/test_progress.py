"""Progress bars: drawn on a terminal, absent from a CI log (not a TTY, or `CI` set), for ours and for
the libraries' tqdm bars alike (evalgate.progress). Each case runs in a child process, under a
pseudo-terminal where it should look like a person's shell."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

SNIPPET = """
from evalgate.progress import bar, quiet_bars_in_logs
quiet_bars_in_logs()
for _ in bar(range(3), desc="ours", mininterval=0): pass
from tqdm import tqdm
for _ in tqdm(range(3), desc="theirs", mininterval=0): pass
"""


def run(env: dict, tty: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "EVALGATE_PROGRESS", "TQDM_DISABLE")} | env
    if not tty:
        p = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # a terminal has a size
    p = subprocess.Popen([sys.executable, "-c", SNIPPET], env=env, stdin=child, stdout=child, stderr=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:   # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(timeout=60) == 0, out
    os.close(main)
    return out.decode(errors="replace")


def test_a_terminal_shows_both_bars():
    out = run({}, tty=True)
    assert "ours: 100%" in out and "theirs: 100%" in out


@pytest.mark.parametrize("env, tty", [({}, False), ({"CI": "true"}, True), ({"EVALGATE_PROGRESS": "0"}, True)])
def test_a_log_shows_none(env, tty):
    out = run(env, tty)
    assert "ours" not in out and "theirs" not in out


def test_forced_on_in_a_log():
    assert "ours: 100%" in run({"EVALGATE_PROGRESS": "1"}, tty=False)
