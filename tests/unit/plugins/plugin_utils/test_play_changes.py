"""Unit tests for plugins/plugin_utils/_play_changes.py: a play's hosts and variables to Endpoints and Changes."""
# pylint: disable=missing-function-docstring

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play_changes import ChangeMaker, PlayState
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play import DEFAULT_STATUS_MAP
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play_vars import VariableProblem

KEY = "aaaa1111" * 2  # a made-up key
URL = "https://api.flashcat.cloud/event/push/change/standard?integration_key=" + KEY
COMMON = dict(play="deploy", playbook="site.yml", run_id="run-1")


class Play:
    _uuid = "play-1"
    check_mode = False


def state_of(index):
    state = PlayState(Play(), index)
    state.name, state.context = "deploy", COMMON
    return state


class Host:
    def __init__(self, name, groups):
        self.name = name
        self._groups = [Group(group) for group in groups + ["all"]]

    def get_groups(self):
        return self._groups


class Group:
    def __init__(self, name):
        self.name = name


class Reader:
    """The part of _play_vars.PlayReader that ChangeMaker uses: the variables of a set's first host."""

    def __init__(self, values, problems=()):
        self.values = values
        self.problems = list(problems)

    def variables(self, host, decrypted=None):
        return dict(self.values.get(host.name, {})), self.problems


def maker(warnings, per_host=False, label_vars=(), option_endpoint=None):
    def warn(message, key=None):
        warnings.append(message)
    return ChangeMaker(warn, warnings.append, option_endpoint or {}, list(label_vars), per_host, "run-1", dict(DEFAULT_STATUS_MAP))


def test_a_set_of_hosts_resolves_its_endpoint_and_one_change_covers_the_play():
    warnings = []
    web = [Host("web1", ["web", "prod"]), Host("web2", ["web", "prod"])]
    values = {"web1": {"flashduty_push_url": URL, "flashduty_labels": {"team": "shop", "k8s-cluster": "eu1"}, "app": "1.2"}}
    make = maker(warnings, label_vars=["app"])
    endpoint, found = make.resolve(Reader(values), web, "deploy")
    assert endpoint.url == URL and found["app"] == "1.2"
    (change,) = make.changes(state_of(3), endpoint, [(web, found)], {"web1": 0, "web2": 1}, "https://ci.example/1", 100.0)
    assert (change.key, change.title, change.link, change.hosts) == ("run-1-3", "Ansible: deploy on web1 and web2",
                                                                     "https://ci.example/1", ["web1", "web2"])
    assert dict(change.labels)["groups"] == "prod,web"
    assert change.user_labels == {"team": "shop", "k8s_cluster": "eu1", "app": "1.2"}
    assert len(warnings) == 1 and "k8s-cluster" in warnings[0]  # the rewritten name, said once


def test_per_host_mode_gives_each_host_its_own_key_labels_and_settings():
    warnings = []
    web1, db1 = Host("web1", ["web"]), Host("db1", ["db"])
    parts = [([db1], {"flashduty_labels": {"team": "data"}, "flashduty_change_key": "CHG-9"}), ([web1], {"flashduty_labels": {"team": "shop"}})]
    make = maker(warnings, per_host=True)
    endpoint, _values = make.resolve(Reader({}), [web1], "deploy") or (None, None)
    assert endpoint is None and "no Flashduty push URL" in warnings[0]  # nothing names an endpoint
    endpoint, _values = maker(warnings, option_endpoint={"push_url": URL}).resolve(Reader({}), [web1], "deploy")
    changes = make.changes(state_of(1), endpoint, parts, {"web1": 0, "db1": 1}, None, 100.0)
    assert [(c.host, c.key, c.user_labels["team"], dict(c.labels)["host"]) for c in changes] == [
        ("web1", "run-1-1-web1", "shop", "web1"), ("db1", "CHG-9-db1", "data", "db1")]


def test_muted_hosts_and_broken_endpoint_variables_are_not_reported():
    warnings = []
    host = [Host("web1", ["web"])]
    assert maker(warnings).resolve(Reader({"web1": {"flashduty_push_url": URL, "flashduty_enabled": False}}), host, "p") is None
    assert warnings == []
    broken = Reader({}, [VariableProblem("flashduty_push_url", "Decryption failed")])
    assert maker(warnings, option_endpoint={"push_url": URL}).resolve(broken, host, "p") is None
    assert len(warnings) == 1 and "flashduty_push_url could not be decrypted" in warnings[0] and "--vault-id" in warnings[0]
