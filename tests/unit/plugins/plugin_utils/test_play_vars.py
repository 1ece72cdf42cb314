"""Unit tests of plugins/plugin_utils/_play_vars.py: PlayReader against Ansible's own objects.

PlayReader reads private attributes of the VariableManager and the inventory (``_inventory``,
the fact caches, ``_sources``), so it is checked here against a real DataLoader,
InventoryManager, VariableManager and play on each ansible-core the suite runs on (2.16 and
the newest), with no fakes. The play is read from a playbook file (Playbook.load), as
ansible-playbook reads it: from 2.19 on, only text read from files is trusted as a template,
so play vars built in Python would stay literal text.
"""
# pylint: disable=missing-function-docstring,protected-access

import ast
from pathlib import Path

import pytest
from ansible import context
from ansible.inventory.manager import InventoryManager
from ansible.parsing import vault
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret
from ansible.playbook import Playbook
from ansible.utils.context_objects import CLIArgs
from ansible.utils.vars import load_extra_vars
from ansible.vars.manager import VariableManager

from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play, _play_vars
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play_vars import PLAY_VARIABLES, PlayReader, VariableProblem

PUSH = "https://flashduty.example.com/event/push/change/standard?integration_key="
WEB_URL = PUSH + "0123456789abcdef" * 2  # made-up keys
DB_URL = PUSH + "fedcba9876543210" * 2
WEB_KEY = "0123456789abcdef0123456789abcdef"
RIGHT = (("default", VaultSecret(b"the right vault password")),)
WRONG = [("default", VaultSecret(b"a wrong vault password"))]

INVENTORY = """\
[web]
web1
web2
web3 flashduty_change_title="web3 from the inventory"
web4
web5
web6
web7
web8

[db]
db1
"""

PLAYBOOK = """\
- name: deploy checkout
  hosts: web:db
  gather_facts: false
  vars:
    release: "2.0"
    flashduty_change_link: "https://ci.example.com/builds/{{ release }}"
    flashduty_change_key: from play vars
%s
  tasks: []
"""


def vaulted(plaintext):
    """``!vault |`` YAML for ``plaintext``, as ansible-vault encrypt_string writes it (indented for a mapping value)."""
    ciphertext = VaultLib(RIGHT).encrypt(plaintext).decode()
    return "!vault |\n" + "".join("  %s\n" % line for line in ciphertext.splitlines())


@pytest.fixture
def project(tmp_path):
    """An inventory directory with group_vars/ and host_vars/, and a playbook directory with its own host_vars/."""
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "host_vars").mkdir()
    (inventory / "hosts").write_text(INVENTORY)
    (inventory / "group_vars" / "all.yml").write_text('release: "1.0"\nflashduty_change_title: from group_vars/all\n')
    (inventory / "group_vars" / "web.yml").write_text(
        'flashduty_change_title: "deploy {{ release }} (group_vars/web)"\n'
        'flashduty_labels:\n  team: checkout\n  release: "{{ release }}"\n'
        "flashduty_push_url: " + vaulted(WEB_URL))
    (inventory / "group_vars" / "db.yml").write_text("flashduty_push_url: " + vaulted(DB_URL))
    (inventory / "host_vars" / "web2.yml").write_text("flashduty_change_title: web2 from host_vars\n")
    (inventory / "host_vars" / "web4.yml").write_text("rack: r4\n")  # host-level, but no name PlayReader reads
    playbooks = tmp_path / "playbooks"
    (playbooks / "host_vars").mkdir(parents=True)
    (playbooks / "host_vars" / "web7.yml").write_text("flashduty_change_title: web7 from the playbook's host_vars\n")
    return tmp_path


@pytest.fixture
def load(project, monkeypatch):
    """``load(secrets=RIGHT, extra_vars=(), play_vars='') -> PlayReader`` for the project's play, set up as ansible-playbook does.

    ``extra_vars`` are ``-e`` arguments; ``play_vars`` more lines under the play's ``vars:``.
    """

    def load_play(secrets=RIGHT, extra_vars=(), play_vars=""):
        monkeypatch.setattr(context, "CLIARGS", CLIArgs(dict(extra_vars=tuple(extra_vars))))
        monkeypatch.setattr(load_extra_vars, "extra_vars", None, raising=False)  # its cache of the first run's -e
        loader = DataLoader()
        loader.set_vault_secrets(secrets)
        secrets_context = getattr(vault, "VaultSecretsContext", None)
        if secrets_context is not None:  # 2.19+: vaulted values decrypt with the process-wide secrets the CLI set
            monkeypatch.setattr(secrets_context, "_current", secrets_context(secrets))
        inventory = InventoryManager(loader=loader, sources=[str(project / "inventory")])
        variable_manager = VariableManager(loader=loader, inventory=inventory)
        path = project / "playbooks" / "site.yml"
        path.write_text(PLAYBOOK % "".join("    %s\n" % line for line in play_vars.splitlines()))
        playbook = Playbook.load(str(path), variable_manager=variable_manager, loader=loader)
        loader.set_basedir(playbook._basedir)  # as PlaybookExecutor does before running the plays: playbook host_vars count
        return PlayReader(playbook.get_plays()[0], names=PLAY_VARIABLES + ("release",))

    return load_play


def names(hosts):
    return [host.name for host in hosts]


def host(reader, name):
    return reader.inventory.get_host(name)


# ---------------------------------------------------------------- the split

def test_the_pure_part_imports_nothing_from_ansible_but_module_utils():
    tree = ast.parse(Path(_play.__file__).read_text())
    modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    ansible = [module for module in modules if module.startswith("ansible")]
    assert ansible and all(module.startswith("ansible_collections.flashcat.flashduty.plugins.module_utils.") for module in ansible)


# ---------------------------------------------------------------- target hosts

def test_target_hosts_are_the_play_hosts_in_inventory_order(load):
    assert names(load().target_hosts()) == ["web1", "web2", "web3", "web4", "web5", "web6", "web7", "web8", "db1"]


def test_target_hosts_honour_limit_and_exclude(load):
    reader = load()
    reader.inventory.subset("web3,db1,web1")  # --limit
    assert names(reader.target_hosts()) == ["web1", "web3", "db1"]
    assert names(reader.target_hosts(exclude={"web3"})) == ["web1", "db1"]


def test_target_hosts_are_all_serial_batches_within_the_limit(load):
    reader = load()
    reader.inventory.subset("web1,web2,db1")
    reader.inventory.restrict_to_hosts([host(reader, "web2")])  # what ansible-playbook does for each serial batch
    assert names(reader.inventory.get_hosts(reader.play.hosts)) == ["web2"]
    assert names(reader.target_hosts()) == ["web1", "web2", "db1"]


# ---------------------------------------------------------------- variables

def test_variables_follow_ansible_precedence_and_are_templated(load):
    reader = load()
    values, problems = reader.variables(host(reader, "web1"))
    assert problems == []
    assert values == dict(
        release="2.0",  # play vars over group_vars/all
        flashduty_change_title="deploy 2.0 (group_vars/web)",  # group_vars/web over all, templated with the play's release
        flashduty_labels=dict(team="checkout", release="2.0"),
        flashduty_change_link="https://ci.example.com/builds/2.0",
        flashduty_change_key="from play vars",
        flashduty_push_url=WEB_URL,
    )  # flashduty_api_url, flashduty_enabled...: undefined, so absent
    # Plain types, not Ansible's tagged or unsafe subclasses.
    kinds = [values["flashduty_change_title"], values["flashduty_labels"], values["flashduty_labels"]["release"], values["flashduty_push_url"]]
    assert [value.__class__ for value in kinds] == [str, dict, str, str]
    titles = dict((name, reader.variables(host(reader, name))[0]["flashduty_change_title"]) for name in ("web2", "web3", "db1"))
    assert titles == dict(web2="web2 from host_vars", web3="web3 from the inventory", db1="from group_vars/all")
    assert reader.variables(host(reader, "db1"))[0]["flashduty_push_url"] == DB_URL


def test_extra_vars_win_over_everything(load):
    reader = load(extra_vars=["flashduty_change_key=from-extra-vars", '{"release": "3.0"}'])
    values, problems = reader.variables(host(reader, "web2"))
    assert problems == []
    assert values["flashduty_change_key"] == "from-extra-vars"
    assert values["flashduty_change_link"] == "https://ci.example.com/builds/3.0"
    assert values["flashduty_labels"] == dict(team="checkout", release="3.0")


def test_an_undefined_name_in_a_template_is_a_problem_of_that_variable_only(load):
    reader = load(play_vars='flashduty_change_title: "deploy {{ nowhere_defined }}"')
    values, problems = reader.variables(host(reader, "web1"))
    assert [(problem.name, type(problem)) for problem in problems] == [("flashduty_change_title", VariableProblem)]
    assert "nowhere_defined" in problems[0].message
    assert "flashduty_change_title" not in values
    assert values["flashduty_push_url"] == WEB_URL and values["flashduty_change_key"] == "from play vars"


# ---------------------------------------------------------------- vault

@pytest.mark.parametrize("secrets", [WRONG, []], ids=["wrong vault password", "no vault password"])
def test_a_vaulted_value_that_cannot_be_decrypted_is_a_problem_without_the_plaintext(load, secrets):
    reader = load(secrets=secrets)
    values, problems = reader.variables(host(reader, "web1"))
    assert [problem.name for problem in problems] == ["flashduty_push_url"]
    message = problems[0].message
    assert message and WEB_KEY not in message and "flashduty.example.com" not in message
    assert "flashduty_push_url" not in values
    assert values["flashduty_change_title"] == "deploy 2.0 (group_vars/web)"  # the other variables still come back


def test_a_shared_vaulted_value_is_decrypted_once(load, monkeypatch):
    reader = load()
    calls = []
    decrypt = VaultLib.decrypt

    def counting_decrypt(self, *args, **kwargs):
        calls.append(args[0])
        return decrypt(self, *args, **kwargs)

    monkeypatch.setattr(VaultLib, "decrypt", counting_decrypt)
    decrypted = {}
    # web1, web2 and web3 resolve apart (web2 and web3 have host-level titles) but share group_vars/web's push URL.
    urls = [reader.variables(host(reader, name), decrypted)[0]["flashduty_push_url"] for name in ("web1", "web2", "web3", "db1")]
    assert urls == [WEB_URL, WEB_URL, WEB_URL, DB_URL]
    # Without the cache 2.16 decrypts once per call (4); from 2.19 on EncryptedString also keeps its own plaintext.
    assert len(calls) == 2 and len(decrypted) == 2


def test_the_decrypted_cache_keeps_no_failure(load):
    reader = load(secrets=WRONG)
    decrypted = {}
    for name in ("web1", "web2"):
        values, problems = reader.variables(host(reader, name), decrypted)
        assert [problem.name for problem in problems] == ["flashduty_push_url"]
    assert decrypted == {}


# ---------------------------------------------------------------- classes of hosts

def test_hosts_resolve_together_unless_a_read_variable_is_set_on_the_host(load):
    reader = load()
    variable_manager = reader.variable_manager
    variable_manager.set_nonpersistent_facts("web5", dict(flashduty_change_title="web5 from set_fact"))
    variable_manager.set_host_facts("web6", dict(flashduty_change_title="web6 from the fact cache"))
    variable_manager.set_host_variable("web8", "flashduty_change_title", "web8 from include_vars")
    variable_manager.set_nonpersistent_facts("web1", dict(build_number=42))  # not a name read: web1 stays with its group
    variable_manager.set_host_facts("web4", dict(kernel="6.1"))
    classes = [names(members) for members in reader.classes(reader.target_hosts())]
    assert sorted(classes) == sorted([["web1", "web4"], ["web2"], ["web3"], ["web5"], ["web6"], ["web7"], ["web8"], ["db1"]])
    titles = dict((name, reader.variables(host(reader, name))[0]["flashduty_change_title"]) for name in ("web5", "web6", "web7", "web8"))
    assert titles == dict(web5="web5 from set_fact", web6="web6 from the fact cache", web7="web7 from the playbook's host_vars",
                          web8="web8 from include_vars")


def test_hosts_of_different_groups_resolve_apart(load):
    reader = load()
    reader.inventory.add_group("canary")
    reader.inventory.add_host("web4", group="canary")
    classes = [names(members) for members in reader.classes([host(reader, name) for name in ("web1", "web4", "db1")])]
    assert sorted(classes) == [["db1"], ["web1"], ["web4"]]


# ---------------------------------------------------------------- helpers

def test_error_text_is_the_first_line_and_names_an_empty_error():
    assert _play_vars.error_text(ValueError("\n  bad value  \nat line 3")) == "ValueError: bad value"
    assert _play_vars.error_text(KeyError()) == "KeyError: KeyError"
