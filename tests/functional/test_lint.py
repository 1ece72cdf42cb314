"""ansible-lint checks the arguments of flashcat.flashduty.change_event, and a run reports a typo as modules do.

ansible-lint's args rule runs the main() of the plugin an action resolves to; for an action plugin
without one it checks nothing. The fixture tests/functional/lint/mistyped.yml holds two mistakes that
must be reported and two right tasks that must not.
"""
# pylint: disable=missing-function-docstring,import-error

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ANSIBLE_LINT = Path(sys.executable).parent / "ansible-lint"


@pytest.mark.skipif(not ANSIBLE_LINT.exists(), reason="ansible-lint is installed in .venv/newest only")
def test_ansible_lint_reports_mistyped_options(tmp_path, ansible_env):
    project = tmp_path / "lint_project"
    project.mkdir()
    shutil.copy(HERE / "lint" / "mistyped.yml", project / "site.yml")
    # As the guide says: the args rule is in no profile and is experimental (a warning) unless enabled and
    # left out of warn_list.
    (project / ".ansible-lint").write_text("---\nprofile: production\nenable_list: [args]\nwarn_list: ['jinja[spacing]', 'fqcn[deep]']\n",
                                           encoding="utf-8")
    env = dict(ansible_env, HOME=str(tmp_path), NO_COLOR="1",
               PATH=os.pathsep.join([str(ANSIBLE_LINT.parent), ansible_env["PATH"]]))
    proc = subprocess.run([str(ANSIBLE_LINT), "--offline", "--nocolor", "-f", "pep8", "site.yml"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    report = proc.stdout + proc.stderr
    assert proc.returncode != 0, report
    findings = [line for line in proc.stdout.splitlines() if "args[module]" in line]
    assert len(findings) == 2, report
    typo, status = findings
    assert "site.yml:12:" in typo and "Unsupported parameters" in typo and "titel" in typo, typo
    assert "site.yml:18:" in status and "change_status must be one of" in status and "done" in status, status


def test_a_typo_at_run_time_names_the_module_and_its_options(run_playbook, ansible_env, tmp_path):
    (tmp_path / "site.yml").write_text("\n".join((HERE / "lint" / "mistyped.yml").read_text(encoding="utf-8").splitlines()[:16]) + "\n",
                                       encoding="utf-8")
    proc = run_playbook(["-i", "localhost,", "site.yml"], env=dict(ansible_env, FLASHDUTY_PUSH_URL="https://127.0.0.1:9/never"))
    assert proc.returncode == 2
    assert ("Unsupported parameters for (flashcat.flashduty.change_event) module: titel. Supported parameters include: "
            in proc.stdout), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
