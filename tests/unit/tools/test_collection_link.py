"""Tests for tools/collection_link.py: the clean environment of the ansible-* subprocesses."""
# pylint: disable=missing-function-docstring

import ast
import inspect
import textwrap

from collection_link import CI_VARIABLES, COLLECTIONS_DIR, ansible_environment

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play import detect_ci


def environment_names_read_by(function):
    """The names ``function`` reads from its ``environ`` argument (``environ.get('X')``, ``environ['X']``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names, reads = set(), 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            mapping, key = node.func.value, node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript):
            mapping, key = node.value, node.slice
        else:
            continue
        if isinstance(mapping, ast.Name) and mapping.id == "environ":
            assert isinstance(key, ast.Constant), f"line {node.lineno}: a computed name, this test cannot list it"
            names.add(key.value)
            reads += 1
    uses = sum(isinstance(node, ast.Name) and node.id == "environ" for node in ast.walk(tree))
    assert uses == reads, "environ is used other than by .get('X') or ['X'] (passed on?): this test cannot list the names"
    return names


def test_ci_variables_are_what_detect_ci_reads():
    assert CI_VARIABLES == environment_names_read_by(detect_ci)


def test_ansible_environment_drops_inherited_settings_and_ci(monkeypatch, tmp_path):
    for name in CI_VARIABLES:
        monkeypatch.setenv(name, "true")
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "flashcat.flashduty.change_events")
    monkeypatch.setenv("FLASHDUTY_PUSH_URL", "https://example.invalid/push")
    monkeypatch.setenv("GRAFANA_URL", "https://grafana.invalid")
    monkeypatch.setenv("UNRELATED_SETTING", "kept")
    env = ansible_environment(tmp_path / "home", drop_prefixes=("GRAFANA_",))
    assert detect_ci(env) is None
    assert not CI_VARIABLES & set(env)
    assert "ANSIBLE_CALLBACKS_ENABLED" not in env and "FLASHDUTY_PUSH_URL" not in env and "GRAFANA_URL" not in env
    assert env["UNRELATED_SETTING"] == "kept"
    assert env["ANSIBLE_COLLECTIONS_PATH"] == str(COLLECTIONS_DIR)
    assert env["ANSIBLE_HOME"] == str(tmp_path / "home") and (tmp_path / "home").is_dir()
