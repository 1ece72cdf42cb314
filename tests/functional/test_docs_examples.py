"""The examples in the docs are real: every YAML, JSON and INI block parses, and the Ansible ones pass
ansible-lint with the production profile.

Blocks come from the guides (docs/docsite/rst/*.rst: ``.. code-block:: yaml`` / ``yaml+jinja`` / ``json`` /
``ini``) and the READMEs (````` ```yaml ````` fences). Playbooks, requirements files and execution environment
definitions are written into a scratch project and linted there, with this tree as flashcat.flashduty.
ansible-lint is installed in .venv/newest only: elsewhere the lint test is skipped, the parse tests run.
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rst_blocks import code_blocks

REPO_ROOT = Path(__file__).resolve().parents[2]
RST_DIR = REPO_ROOT / "docs" / "docsite" / "rst"
MARKDOWN = [REPO_ROOT / "roles" / "change" / "README.md", REPO_ROOT / "docs" / "README.md", REPO_ROOT / "README.md"]
ANSIBLE_LINT = Path(sys.executable).parent / "ansible-lint"

_MD_BLOCK = re.compile(r"^```(?P<lang>[\w+-]+)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


class _Loader(yaml.SafeLoader):
    """SafeLoader that accepts Ansible's ``!vault`` and ``!unsafe`` tags."""


_Loader.add_constructor("!vault", lambda loader, node: loader.construct_scalar(node))
_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _rst_blocks(path):
    for block in code_blocks(path):
        yield f"{path.relative_to(REPO_ROOT)}:{block.line}", block.lang, block.body


def _markdown_blocks(path):
    text = path.read_text(encoding="utf-8")
    for match in _MD_BLOCK.finditer(text):
        lineno = text.count("\n", 0, match.start()) + 1
        yield f"{path.relative_to(REPO_ROOT)}:{lineno}", match.group("lang"), match.group("body")


def _blocks():
    found = []
    for path in sorted(RST_DIR.glob("*.rst")):
        found.extend(_rst_blocks(path))
    for path in MARKDOWN:
        if path.exists():
            found.extend(_markdown_blocks(path))
    return found


BLOCKS = _blocks()
YAML_BLOCKS = [b for b in BLOCKS if b[1] in ("yaml", "yaml+jinja", "yml")]


def _kind(data):
    plays = data if isinstance(data, list) else []
    if plays and all(isinstance(p, dict) and ("hosts" in p or "import_playbook" in p) for p in plays):
        return "playbook"
    if isinstance(data, dict) and "collections" in data and set(data) <= {"collections", "roles"}:
        return "requirements"
    if isinstance(data, dict) and data.get("version") == 3 and "dependencies" in data:
        return "execution-environment"
    return None


def test_the_guides_have_examples():
    names = {b[0].split(":")[0] for b in YAML_BLOCKS}
    for guide in ("getting_started", "callback", "task_and_role", "awx_aap", "ci"):
        assert f"docs/docsite/rst/{guide}.rst" in names, guide
    assert "roles/change/README.md" in names


@pytest.mark.parametrize(("where", "lang", "body"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_parses(where, lang, body):
    if lang in ("yaml", "yaml+jinja", "yml"):
        list(yaml.load_all(body, Loader=_Loader))
    elif lang == "json":
        json.loads(body)
    elif lang == "ini":
        configparser.ConfigParser(interpolation=None).read_string(body)


@pytest.mark.skipif(not ANSIBLE_LINT.exists(), reason="ansible-lint is not installed in this venv (only .venv/newest has it)")
def test_ansible_examples_pass_ansible_lint_production(tmp_path, ansible_env):
    project = tmp_path / "docs_examples"
    written = []
    for index, (where, _lang, body) in enumerate(YAML_BLOCKS):
        kind = _kind(yaml.load(body, Loader=_Loader))
        if kind == "playbook":
            target = project / "playbooks" / f"example_{index:02d}.yml"
        elif kind == "requirements":
            target = project / f"requirements_{index:02d}" / "requirements.yml"
        elif kind == "execution-environment":
            target = project / f"ee_{index:02d}" / "execution-environment.yml"
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        text = body if body.startswith("---") else "---\n" + body
        target.write_text(f"# {where}\n{text}", encoding="utf-8")
        written.append((target.relative_to(project), where))
    assert len([w for w in written if w[0].parts[0] == "playbooks"]) >= 4, written
    (project / ".ansible-lint").write_text("---\nprofile: production\n", encoding="utf-8")
    env = dict(ansible_env, HOME=str(tmp_path), PATH=os.pathsep.join([str(ANSIBLE_LINT.parent), ansible_env["PATH"]]))
    result = subprocess.run([str(ANSIBLE_LINT), "--offline", "--nocolor", *[str(w[0]) for w in written]],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)
    listing = "\n".join(f"{path}  <-  {where}" for path, where in written)
    assert result.returncode == 0, f"{listing}\n--- stdout ---\n{result.stdout[-8000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    shutil.rmtree(project / ".ansible", ignore_errors=True)


def test_the_adversarial_cases_table_names_tests_that_exist():
    guide = (RST_DIR / "delivery.rst").read_text(encoding="utf-8")
    table = guide.split("Adversarial cases\n", 1)[1].split("\nOrdering\n", 1)[0]
    named = set(re.findall(r"``(test_\w+)``", table))
    defined = set()
    for path in (REPO_ROOT / "tests").rglob("test_*.py"):
        defined.update(re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.MULTILINE))
    assert len(named) >= 12 and named <= defined, sorted(named - defined)
