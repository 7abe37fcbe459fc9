"""CI runs exactly the README's test command (.ci/run), and only a run where every pytest process
passes can pass: a failure, an empty collection (pytest's exit code 5) or an interruption fails it."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI_RUN = os.path.join(REPO, ".ci", "run")
BACKENDS = ["tensorflow", "jax", "torch"]  # the pytest processes of the test command, in order


def _readme_test_command():
    lines = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# 2. "))
    return lines[start + 1]


def _ci_command():
    body = [line for line in open(CI_RUN, encoding="utf-8").read().splitlines()
            if line.strip() and not line.startswith("#")]
    assert body[:2] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."'], body
    return body[2:]


def test_ci_runs_exactly_the_readme_test_command():
    assert _ci_command() == [_readme_test_command()]


def test_test_command_runs_pytest_once_per_keras_backend():
    command = _readme_test_command()
    runs = [part.strip() for part in command.split("&&") if "-m pytest" in part]
    pytest = ".venv/bin/python -m pytest -q -n 2 --dist loadfile"  # two workers (CI's two cores), a file each
    assert runs == [pytest] + [f"KERAS_BACKEND={b} {pytest}" for b in BACKENDS[1:]]
    assert "||" not in command and ";" not in command  # one && chain: any failing step fails it


# A stand-in for python3 -m venv: writes a .venv whose pip does nothing and whose python logs each
# pytest call's backend, then behaves as the test asks (exit status or sleeping until killed).
_FAKE_PYTHON3 = """#!/usr/bin/env bash
set -e
[ "$1 $2 $3" = "-m venv .venv" ] || exit 99
mkdir -p .venv/bin
printf '#!/usr/bin/env bash\\nexit 0\\n' > .venv/bin/pip
cat > .venv/bin/python <<'PY'
#!/usr/bin/env bash
echo "${KERAS_BACKEND:-tensorflow} $*" >> "$FAKE_LOG"
n=$(wc -l < "$FAKE_LOG")
action=$(sed -n "${n}p" "$FAKE_ACTIONS")
if [ "$action" = sleep ]; then exec sleep 60; fi
exit "${action:-0}"
PY
chmod +x .venv/bin/pip .venv/bin/python
"""


def _fake_ci(tmp_path, actions):
    """A copy of .ci/run in an empty checkout whose python3 is the stand-in above."""
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    shutil.copy(CI_RUN, root / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(_FAKE_PYTHON3)
    (bin_dir / "python3").chmod(stat.S_IRWXU)
    (tmp_path / "actions").write_text("\n".join(actions) + "\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_LOG": str(tmp_path / "log"), "FAKE_ACTIONS": str(tmp_path / "actions")}
    env.pop("KERAS_BACKEND", None)
    return root, env


def _calls(tmp_path):
    log = tmp_path / "log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_ci_passes_when_every_backend_passes(tmp_path):
    root, env = _fake_ci(tmp_path, ["0", "0", "0"])
    run = subprocess.run(["bash", str(root / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert _calls(tmp_path) == BACKENDS


@pytest.mark.parametrize("failing", range(3), ids=BACKENDS)
@pytest.mark.parametrize("status", [1, 2, 5], ids=["tests-failed", "interrupted", "no-tests-collected"])
def test_ci_fails_when_any_pytest_process_fails(tmp_path, failing, status):
    actions = ["0"] * 3
    actions[failing] = str(status)
    root, env = _fake_ci(tmp_path, actions)
    run = subprocess.run(["bash", str(root / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == status
    assert _calls(tmp_path) == BACKENDS[: failing + 1]  # and nothing runs after the failure


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_ci_fails(tmp_path, sig):
    """The CI job is interrupted while its first pytest process runs (a cancelled job, Ctrl-C)."""
    root, env = _fake_ci(tmp_path, ["sleep", "0", "0"])
    # Default signal handling in the job: a pytest started in the background of a non-interactive
    # shell inherits SIGINT ignored, which bash and sleep would keep.
    proc = subprocess.Popen(["bash", str(root / ".ci" / "run")], env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not _calls(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _calls(tmp_path) == ["tensorflow"]
        os.killpg(proc.pid, sig)  # the whole job, as a terminal or a CI runner does
        assert proc.wait(timeout=30) != 0
        assert _calls(tmp_path) == ["tensorflow"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
