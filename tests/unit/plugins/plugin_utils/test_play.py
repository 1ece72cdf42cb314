"""Unit tests of plugins/plugin_utils/_play.py: a play as a Flashduty change (pure functions)."""
# pylint: disable=missing-function-docstring

import pytest

from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import MAX_DESCRIPTION_LENGTH, build_event, endpoint_for, mask_url
from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _play
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._play import (
    AUTOMATIC_LABELS,
    automatic_labels,
    cap_labels,
    change_title,
    clean_user_labels,
    detect_ci,
    hosts_phrase,
    merge_user_labels,
    parse_status_map,
    start_description,
    summarize_names,
    visible_groups,
)

# ---------------------------------------------------------------- names


def test_summarize_names_keeps_short_lists_whole():
    assert summarize_names(["web1", "web2"]) == "web1,web2"
    assert summarize_names([]) == ""


def test_summarize_names_cuts_long_lists_with_a_count():
    names = ["web%d" % index for index in range(1, 501)]
    text = summarize_names(names, limit=30)
    assert text == "web1,web2,web3,... (+497 more)"
    assert len(text) <= 30
    text = summarize_names(names)
    assert len(text) <= 2048 and text.startswith("web1,web2,") and text.endswith("more)")
    kept = text.split(",... ")[0].split(",")
    assert text.endswith("(+%d more)" % (500 - len(kept)))


def test_summarize_names_with_one_huge_name():
    assert summarize_names(["x" * 5000, "y"], limit=40) == "... (2 in all)"


def test_hosts_phrase():
    assert hosts_phrase([]) == "no hosts"
    assert hosts_phrase(["web1"]) == "web1"
    assert hosts_phrase(["web1", "web2", "web3"]) == "web1, web2 and web3"
    assert hosts_phrase(["h%d" % i for i in range(10)]) == "h0, h1, h2 and 7 more"


def test_visible_groups_drop_all_and_ungrouped():
    assert visible_groups(["web", "all", "prod", "ungrouped", "web"]) == ["prod", "web"]


# ---------------------------------------------------------------- status map


def test_status_map_defaults():
    assert parse_status_map(None) == (_play.DEFAULT_STATUS_MAP, [])
    assert parse_status_map("")[0]["interrupted"] == "Canceled"


@pytest.mark.parametrize("value", ["failed=Canceled,started=ready", "failed:Canceled started=Ready", {"failed": "Canceled", "started": "Ready"}])
def test_status_map_overrides_some_phases(value):
    mapping, warnings = parse_status_map(value)
    assert warnings == []
    assert mapping == dict(_play.DEFAULT_STATUS_MAP, failed="Canceled", started="Ready")


def test_status_map_problems_are_warnings_and_keep_defaults():
    mapping, warnings = parse_status_map("failed=Broken,nope=Done,garbage")
    assert mapping == _play.DEFAULT_STATUS_MAP
    assert len(warnings) == 3
    assert "garbage" in warnings[0] and "Broken" in warnings[1] and "nope" in warnings[2]
    assert parse_status_map(42)[0] == _play.DEFAULT_STATUS_MAP


# ---------------------------------------------------------------- CI


def test_no_ci():
    assert detect_ci({}) is None


def test_github_actions():
    ci = detect_ci({"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/shop",
                    "GITHUB_RUN_ID": "99", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_WORKFLOW": "deploy", "GITHUB_REF_NAME": "main",
                    "GITHUB_SHA": "abc", "GITHUB_ACTOR": "alice"})
    assert ci["link"] == "https://github.com/acme/shop/actions/runs/99/attempts/2"
    assert ci["labels"] == {"ci_system": "github_actions", "ci_job_id": "99", "ci_job_name": "deploy", "ci_repository": "acme/shop",
                            "ci_ref": "main", "ci_commit": "abc", "ci_actor": "alice"}


def test_gitlab_ci():
    ci = detect_ci({"GITLAB_CI": "true", "CI_JOB_URL": "https://gitlab.example.com/acme/shop/-/jobs/7", "CI_JOB_ID": "7",
                    "CI_PROJECT_PATH": "acme/shop", "CI_COMMIT_SHA": "abc", "GITLAB_USER_LOGIN": "bob"})
    assert ci["link"] == "https://gitlab.example.com/acme/shop/-/jobs/7"
    assert ci["labels"]["ci_system"] == "gitlab_ci" and ci["labels"]["ci_actor"] == "bob" and ci["labels"]["ci_job_name"] is None


def test_jenkins_never_labels_the_git_url():
    ci = detect_ci({"JENKINS_URL": "https://ci/", "BUILD_URL": "https://ci/job/deploy/12/", "BUILD_NUMBER": "12", "JOB_NAME": "deploy",
                    "GIT_URL": "https://user:token@git.example.com/shop.git"})
    assert ci["link"] == "https://ci/job/deploy/12/"
    assert "token" not in repr(ci)


def test_awx_from_environment_and_extra_vars():
    ci = detect_ci({"JOB_ID": "31", "AWX_HOST": "https://awx.example.com/"})
    assert ci["system"] == "awx" and ci["link"] == "https://awx.example.com/#/jobs/playbook/31"
    ci = detect_ci({"AWX_HOST": "https://awx.example.com"}, {"tower_job_id": 32, "awx_job_template_name": "Deploy shop",
                                                             "awx_user_name": "carol", "awx_project_revision": "abc"})
    assert ci["link"] == "https://awx.example.com/#/jobs/playbook/32"
    assert ci["labels"] == {"ci_system": "awx", "ci_job_id": "32", "ci_job_name": "Deploy shop", "ci_ref": None, "ci_commit": "abc",
                            "ci_actor": "carol"}
    # JOB_ID alone is too common a name to mean AWX.
    assert detect_ci({"JOB_ID": "31"}) is None


# ---------------------------------------------------------------- labels


def test_automatic_labels_in_priority_order():
    pairs = automatic_labels(["web1", "web2"], ["prod", "web"], "Deploy", playbook="site.yml", pattern=["web"], limit="web1:web2",
                             tags=["deploy"], skip_tags=(), check_mode=False, run_id="r", controller_user="u", controller_host="h",
                             ansible_version="2.21.5", ci_labels={"ci_system": "jenkins", "ci_job_id": None})
    assert pairs == [("play", "Deploy"), ("hosts", "web1,web2"), ("groups", "prod,web"), ("host_count", "2"), ("playbook", "site.yml"),
                     ("host_pattern", "web"), ("limit", "web1:web2"), ("tags", "deploy"), ("check_mode", "false"), ("run_id", "r"),
                     ("ci_system", "jenkins"), ("controller_user", "u"), ("controller_host", "h"), ("ansible_version", "2.21.5")]
    names = [name for name, dummy in pairs]
    assert names == sorted(names, key=AUTOMATIC_LABELS.index)


def test_automatic_labels_leave_out_default_tags_and_name_the_host():
    labels = dict(automatic_labels(["web1"], [], "Deploy", tags=("all",), skip_tags=[], host="web1", check_mode=True))
    assert "tags" not in labels and "skip_tags" not in labels and "groups" not in labels and "limit" not in labels
    assert labels["host"] == "web1" and labels["check_mode"] == "true"


def test_automatic_labels_are_valid_for_flashduty_with_thousands_of_hosts():
    hosts = ["node%04d.example.com" % index for index in range(3000)]
    labels = dict(automatic_labels(hosts, ["g%d" % index for index in range(500)], "p" * 3000))
    event, warnings = build_event("Done", "k", "t", labels=labels)
    assert warnings == []
    assert all(len(value) <= 2048 for value in event["labels"].values())
    assert event["labels"]["host_count"] == "3000"


def test_cap_labels_user_labels_win():
    automatic = [(name, "a") for name in ("play", "hosts", "groups", "host_count", "playbook")]
    labels, dropped = cap_labels(automatic, {"team": "x", "play": "mine"}, limit=4)
    assert labels == {"team": "x", "play": "mine", "hosts": "a", "groups": "a"}
    assert dropped == ["host_count", "playbook"]
    labels, dropped = cap_labels(automatic, {"u%d" % index: "v" for index in range(6)}, limit=4)
    assert labels == {"u0": "v", "u1": "v", "u2": "v", "u3": "v"}
    assert dropped == ["u4", "u5", "play", "hosts", "groups", "host_count", "playbook"]
    assert cap_labels(automatic, {}, limit=50) == (dict(automatic), [])


def test_clean_user_labels_rewrites_names_and_drops_only_what_cannot_be_rewritten():
    labels, warnings, masked = clean_user_labels({"team": "a", "bad-name": "b", "n": 3, "gone": None, "flag": True, "bad.name": "c",
                                                  "": "d"}, "flashduty_labels")
    assert masked == []
    assert labels == {"team": "a", "bad_name": "b", "n": "3", "flag": "true"}
    assert warnings == [
        "flashduty_labels: label names rewritten to Prometheus style (letters, digits and underscores, not starting with a digit): "
        "'bad-name' -> 'bad_name'",
        "flashduty_labels: label names 'bad-name' and 'bad.name' are both 'bad_name' in Prometheus style; rename one; the label is left out",
        "flashduty_labels: a label name is empty; the label is left out",
    ]
    assert clean_user_labels(["x"], "flashduty_labels") == ({}, ["flashduty_labels must be a mapping of label names to values; it is ignored"], [])
    assert clean_user_labels(None, "x") == ({}, [], [])


def test_clean_user_labels_masks_the_key():
    url = "https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "ab12" * 8
    labels, warnings, masked = clean_user_labels({"url": url, "key": "ab12" * 8}, "label_vars", endpoint_for(url).secrets)
    assert labels == {"url": mask_url(url), "key": "****"} and warnings == []
    # Named in the one warning of the event, with what build_event masks itself.
    assert masked == ["label_vars.url", "label_vars.key"]
    assert build_event("Done", "k", "t " + url, labels=labels, secrets=endpoint_for(url).secrets, masked=masked)[1] == [
        "label_vars.url, label_vars.key, title held the Flashduty integration key or push URL; it was masked as ****. "
        "Never put the push URL or the key in event content"]


def test_cap_labels_matches_user_names_as_they_will_be_sent():
    labels, dropped = cap_labels([("host_count", "2"), ("play", "p")], {"host-count": "mine"}, limit=50)
    assert labels == {"host-count": "mine", "play": "p"} and dropped == []
    assert build_event("Done", "k", "t", labels=labels)[0]["labels"] == {"host_count": "mine", "play": "p"}


def test_merge_user_labels_joins_different_values():
    assert merge_user_labels([{"env": "prod", "team": "a"}, {"env": "staging", "team": "a"}, {}]) == {"env": "prod,staging", "team": "a"}


# ---------------------------------------------------------------- title and description


def test_title():
    assert change_title("Deploy", ["web1", "web2"]) == "Ansible: Deploy on web1 and web2"
    assert change_title("Deploy", ["web1", "web2"], host="web2") == "Ansible: Deploy on web2"
    assert len(change_title("x" * 500, ["web1"])) == _play.TITLE_MAX_LENGTH
    assert change_title("ad-hoc ping", ["web1", "web2"], module="ping") == "Ansible ad-hoc: ping on web1 and web2"


def test_descriptions_stay_within_flashduty_limit():
    hosts = ["node%04d.example.com" % index for index in range(2000)]
    context = dict(playbook="site.yml", pattern="all", limit="node*", tags=["deploy"], check_mode=False, controller_user="u", controller_host="c",
                   ansible_version="2.21.5", run_id="r")
    text = start_description("Deploy", hosts, context)
    assert text.startswith('Ansible play "Deploy" started on 2000 hosts: node0000.example.com, ')
    assert "Playbook site.yml (hosts: all; limit: node*; tags: deploy), by u@c, with ansible-core 2.21.5, run r." in text
    assert len(text) <= MAX_DESCRIPTION_LENGTH


def test_context_line_names_the_revision_and_the_ad_hoc_module():
    line = _play.context_line(playbook="site.yml", revision="0123456789ab-dirty", run_id="r")
    assert line == "Playbook site.yml (revision 0123456789ab-dirty), run r."
    assert _play.context_line(module="ansible.builtin.ping", pattern="web") == "Ad-hoc run of ansible.builtin.ping (hosts: web)."


def test_controller_identity():
    user, host = _play.controller_identity()
    assert user and host
