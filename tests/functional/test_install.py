"""Build the collection tarball, check what it ships, install it into a clean path, use it from there.

What a user of Galaxy gets is the tarball, not this tree: these tests run the task, the role,
the playbook and ansible-doc with ANSIBLE_COLLECTIONS_PATH set to the clean install path only.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]

# Nothing of the development tree may ship: venvs, build output, tests, tools, benchmarks,
# molecule scenarios, caches, receiver stores and logs, editor and VCS files.
FORBIDDEN = re.compile(
    r"(^|/)(\.venv|\.build|\.ansible|\.benchmarks|\.ci|\.git|\.github|tests|tools|bench|examples|extensions"
    r"|requirements|__pycache__|\.pytest_cache|\.ruff_cache|\.mypy_cache|\.tox)(/|$)"
    r"|\.pyc$|\.jsonl$|\.log$|\.retry$|\.tar\.gz$|(^|/)changelogs/fragments(/|$)"
    r"|^(Makefile|pytest\.ini|ruff\.toml|\.ansible-lint|\.gitignore)$"
)
REQUIRED = (
    "MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml", "meta/execution-environment.yml",
    "plugins/modules/change_event.py", "plugins/action/change_event.py", "plugins/module_utils/_flashduty.py",
    "plugins/module_utils/_client.py", "plugins/module_utils/_transport.py",
    "plugins/doc_fragments/connection.py", "roles/change/meta/argument_specs.yml", "roles/change/tasks/main.yml",
    "playbooks/send_change_event.yml", "docs/docsite/extra-docs.yml", "docs/docsite/links.yml",
)


def _clean_env(collections_path, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "FLASHDUTY_"))}
    env.update(
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    return env


def _run(cmd, env, cwd, check=True, timeout=180):
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{cmd} failed, rc={result.returncode}\n--- stdout ---\n{result.stdout[-5000:]}\n"
                    f"--- stderr ---\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the tarball from the repo root and install it into a fresh collections path.

    Returns a dict: tarball (Path), members (set of names), collections (the install path),
    home (an ANSIBLE_HOME), env (an environment that sees only the installed copy).
    """
    base = tmp_path_factory.mktemp("install")
    home = base / "ansible_home"
    home.mkdir()
    collections = base / "collections"
    env = _clean_env(collections, home)
    dist = base / "dist"
    _run([VENV_BIN / "ansible-galaxy", "collection", "build", "--output-path", dist, REPO_ROOT], env, base)
    (tarball,) = dist.glob("flashcat-flashduty-*.tar.gz")
    with tarfile.open(tarball) as archive:
        members = {m.name[2:] if m.name.startswith("./") else m.name for m in archive.getmembers()}
    _run([VENV_BIN / "ansible-galaxy", "collection", "install", "-p", collections, tarball], env, base)
    return {"tarball": tarball, "members": members, "collections": collections, "home": home, "env": env}


def test_tarball_ships_content_only(installed):
    members = installed["members"]
    forbidden = sorted(m for m in members if FORBIDDEN.search(m.rstrip("/")))
    assert not forbidden, f"the tarball ships development files: {forbidden}"
    missing = [name for name in REQUIRED if name not in members]
    assert not missing, f"the tarball lacks {missing}"
    manifest = json.loads((installed["collections"] / "ansible_collections/flashcat/flashduty/MANIFEST.json")
                          .read_text(encoding="utf-8"))
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"]) == ("flashcat", "flashduty")
    for field in ("repository", "documentation", "issues", "license", "tags"):
        assert info[field], field
    version = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text(encoding="utf-8"))["version"]
    assert installed["tarball"].name == f"flashcat-flashduty-{version}.tar.gz"


def test_installed_copy_runs_task_role_and_playbook(installed, receiver, tmp_path):
    env = dict(installed["env"], FLASHDUTY_PUSH_URL=receiver.push_url)
    listing = _run([VENV_BIN / "ansible-galaxy", "collection", "list", "flashcat.flashduty", "--format", "json"],
                   env, tmp_path)
    paths = list(json.loads(listing.stdout))
    assert paths == [str(installed["collections"] / "ansible_collections")], paths

    playbook = tmp_path / "site.yml"
    playbook.write_text(textwrap.dedent(f"""
        - name: Use the installed collection
          hosts: localhost
          gather_facts: false
          connection: local
          vars:
            ansible_python_interpreter: {sys.executable}
          tasks:
            - name: Send with the task
              flashcat.flashduty.change_event:
                change_key: CHG-INSTALL
                change_status: Processing
                title: Installed copy
                labels:
                  source: task
            - name: Send with the role
              ansible.builtin.include_role:
                name: flashcat.flashduty.change
              vars:
                flashduty_change_status: Done
                flashduty_change_key: CHG-INSTALL
                flashduty_change_title: Installed copy
        """).lstrip("\n"), encoding="utf-8")
    result = _run([VENV_BIN / "ansible-playbook", "-v", playbook], env, tmp_path)
    assert str(REPO_ROOT / "plugins") not in result.stdout
    sent = _run([VENV_BIN / "ansible-playbook", "flashcat.flashduty.send_change_event", "-e", "change_key=CHG-INSTALL",
                 "-e", "change_status=Done", "-e", "title='From the playbook'"], env, tmp_path)
    assert "failed=0" in sent.stdout, sent.stdout
    events = receiver.events
    assert [(e["change_key"], e["change_status"], e["title"]) for e in events] == [
        ("CHG-INSTALL", "Processing", "Installed copy"),
        ("CHG-INSTALL", "Done", "Installed copy"),
        ("CHG-INSTALL", "Done", "From the playbook"),
    ]
    assert events[0]["labels"]["source"] == "task"


def test_ansible_doc_renders_from_the_installed_copy(installed, tmp_path):
    env = installed["env"]
    installed_root = installed["collections"] / "ansible_collections/flashcat/flashduty"
    module = _run([VENV_BIN / "ansible-doc", "--json", "flashcat.flashduty.change_event"], env, tmp_path)
    doc = json.loads(module.stdout)["flashcat.flashduty.change_event"]
    assert doc["doc"]["filename"].startswith(str(installed_root)), doc["doc"]["filename"]
    assert {"change_key", "change_status", "title", "push_url"} <= set(doc["doc"]["options"])
    text = _run([VENV_BIN / "ansible-doc", "flashcat.flashduty.change_event"], env, tmp_path)
    assert "change_status" in text.stdout and "FLASHDUTY_PUSH_URL" in text.stdout, text.stdout
    role = _run([VENV_BIN / "ansible-doc", "-t", "role", "flashcat.flashduty.change"], env, tmp_path)
    assert re.search(r"ENTRY POINT: \W?start\b", role.stdout) and re.search(r"ENTRY POINT: \W?finish\b", role.stdout), role.stdout


def test_ansible_doc_renders_the_callback_from_the_installed_copy(installed, tmp_path):
    if not (REPO_ROOT / "plugins" / "callback" / "change_events.py").exists():
        pytest.skip("plugins/callback/change_events.py is not in this tree yet")
    env = installed["env"]
    installed_root = installed["collections"] / "ansible_collections/flashcat/flashduty"
    result = _run([VENV_BIN / "ansible-doc", "-t", "callback", "--json", "flashcat.flashduty.change_events"],
                  env, tmp_path)
    doc = json.loads(result.stdout)["flashcat.flashduty.change_events"]["doc"]
    assert doc["filename"].startswith(str(installed_root)), doc["filename"]
    assert doc["type"] == "notification"
    assert "push_url" in doc["options"]
    text = _run([VENV_BIN / "ansible-doc", "-t", "callback", "flashcat.flashduty.change_events"], env, tmp_path)
    assert "FLASHDUTY_PUSH_URL" in text.stdout
