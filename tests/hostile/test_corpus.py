"""The hostile-input table: every (case, command) pair exits 2, names the file, writes nothing, never hangs.

See ``_cases.py`` for the cases and ``_sandbox.py`` for the inputs they corrupt. The CLI runs in-process (fast);
a per-case alarm turns a hang into a failure instead of a stuck suite.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostile._cases import CASES, COMMANDS, Case
from hostile._sandbox import build_sandbox, copy_sandbox, snapshot
from weightspace.cli import main

TIMEOUT_S = int(os.environ.get("WS_HOSTILE_TIMEOUT", "20"))

PAIRS = [(c, cmd) for c in CASES for cmd in c.commands]


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = build_sandbox(tmp_path_factory.mktemp("hostile-template") / "S")
    before = snapshot(root)
    yield root
    # Sandboxes are hard-linked copies: a case (or a command) that edited a file in place would show here.
    assert snapshot(root) == before, "a hostile case changed the shared template in place"


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise _Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``weightspace argv`` in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _deadline(TIMEOUT_S):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:  # pragma: no cover - main always exits
            code = 0
    return code, out.getvalue(), err.getvalue()


def argv_for(c: Case, command: str, sandbox: Path) -> list[str]:
    out = str(sandbox / c.out) if c.out is not None else ""
    if c.out == ".":
        out = str(sandbox)
    return [a.replace("{S}", str(sandbox)).replace("{X}", out) for a in COMMANDS[command]]


@pytest.mark.parametrize(("case", "command"), PAIRS, ids=[f"{c.id}-{cmd}" for c, cmd in PAIRS])
def test_hostile_input_is_refused_cleanly(template: Path, tmp_path: Path, case: Case, command: str) -> None:
    sandbox = copy_sandbox(template, tmp_path / "S")
    case.mutate(sandbox)
    before = snapshot(tmp_path)
    code, _out, err = run_cli(argv_for(case, command, sandbox))
    after = snapshot(tmp_path)
    assert "internal error" not in err, err
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}: {err}"
    assert "\x1b" not in err, repr(err)
    assert "weights_only" not in err, err  # never relay torch's advice to turn the restricted unpickler off
    expect = [e for e in case.expect if e]
    if case.out is not None:
        expect.append((sandbox / case.out).name if case.out != "." else sandbox.name)
    for word in expect:
        assert word in err, f"{word!r} not named in: {err}"
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"the sandbox changed: {changed[:10]}"


def test_the_table_is_large_enough() -> None:
    assert len(PAIRS) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(cmd in COMMANDS for c in CASES for cmd in c.commands)


if __name__ == "__main__":  # pragma: no cover - a quick tally: python tests/hostile/test_corpus.py
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
