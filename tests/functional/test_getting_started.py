"""Getting Started runs as written: every command and file of docs/docsite/rst/getting_started.rst, in order,
in a temporary directory, with a terminal for the prompts (the new vault password, the pasted push URL, the
vault password of the run) and the local receiver as "Flashduty".

Only the Galaxy install is not run (no network here; the collection under test is on
ANSIBLE_COLLECTIONS_PATH instead); the test fails if the guide gains any other command it does not run.
"""
# pylint: disable=missing-function-docstring,import-error

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from rst_blocks import code_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "docsite" / "rst" / "getting_started.rst"
VENV_BIN = Path(sys.executable).parent
VAULT_PASSWORD = "getting started"
NOT_RUN = ("ansible-galaxy collection install flashcat.flashduty",)


def guide_steps():
    """("command", text) and ("file", (name, text)) in the order the guide gives them."""
    for block in code_blocks(GUIDE):
        body = block.body
        caption = re.search(r":caption: (\S+)", block.options)
        if block.lang == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    yield "command", line[2:].strip()
        elif caption:
            yield "file", (caption.group(1), body)


def run_in_terminal(command, cwd, env, answers, timeout=120):
    """Run ``command`` with bash in a new terminal; ``answers`` are (prompt, reply) in order, a None prompt
    meaning "right after the previous reply". Returns (rc, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, the terminal as its controlling tty
        try:
            os.chdir(cwd)
            os.execve("/bin/bash", ["bash", "-c", command], env)
        finally:
            os._exit(127)
    output = b""
    answered = 0
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready = select.select([fd], [], [], 0.2)[0]
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                output += data
            while pending and (pending[0][0] is None or pending[0][0].encode() in output[answered:]):
                prompt, reply = pending.pop(0)
                if prompt is not None:
                    answered = output.index(prompt.encode(), answered) + len(prompt)
                # Let the prompt switch echo off and start reading (getpass discards input typed too early);
                # a reply without a prompt is typed once the previous one was read.
                time.sleep(0.3 if prompt is not None else 1.0)
                os.write(fd, reply.encode())
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        status = os.waitpid(pid, 0)[1]
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


# The child only chdirs and execs: the receiver's threads hold no lock it needs.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_getting_started_runs_as_written(tmp_path, ansible_env, receiver):
    # PAGER: ansible-doc pages its output on a terminal; a reader quits the pager, the test has none.
    env = dict(ansible_env, PATH=os.pathsep.join([str(VENV_BIN), ansible_env["PATH"]]), HOME=str(tmp_path), PAGER="cat")
    cwd = tmp_path
    ran, skipped = [], []
    for kind, step in guide_steps():
        if kind == "file":
            name, body = step
            (cwd / name).write_text(body, encoding="utf-8")
            continue
        if step in NOT_RUN:
            skipped.append(step)
            continue
        answers = []
        if step.startswith("ansible-vault encrypt_string"):
            answers = [("New Vault password:", VAULT_PASSWORD + "\n"), ("Confirm New Vault password:", VAULT_PASSWORD + "\n"),
                       (None, receiver.push_url + "\x04\x04")]  # no prompt: its stdout goes to the file
        elif "--ask-vault-pass" in step:
            answers = [("Vault password:", VAULT_PASSWORD + "\n")]
        if step.startswith("cd "):
            cwd = cwd / step[3:]
            ran.append(step)
            continue
        rc, output = run_in_terminal(step, cwd, env, answers)
        assert rc == 0, f"$ {step}\n{output[-4000:]}"
        if not step.startswith("ansible-vault"):  # there the terminal echoes the URL as it is pasted
            assert receiver.integration_key not in output, step
        ran.append(step)
    assert skipped == list(NOT_RUN)
    assert any(step.startswith("ansible-playbook") for step in ran), ran
    vault = (cwd / "group_vars" / "all" / "vault.yml").read_text(encoding="utf-8")
    assert "flashduty_push_url: !vault |" in vault and receiver.integration_key not in vault
    events = receiver.events
    assert [event["change_status"] for event in events] == ["Processing", "Done"], events
    assert events[0]["title"] == "Ansible: Say hello on localhost"
