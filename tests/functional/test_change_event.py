"""Functional tests of the flashcat.flashduty.change_event task: real ansible-playbook runs
against the local receiver (tools/flashduty_receiver.py).

The playbooks and the inventory live in tests/functional/change_event/; each test copies
that directory to its tmp_path and adds what is per-run there (a vaulted group_vars file,
an extra-vars file with the receiver URLs). Playbooks save their registered task results
to a JSON file (``results_file``), which the tests read: ansible-core has no JSON callback.
"""
# pylint: disable=missing-function-docstring,redefined-outer-name,import-error

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flashduty_receiver import Receiver, closed_port

HERE = Path(__file__).resolve().parent / "change_event"
VENV_BIN = Path(sys.executable).parent
PUSH = "/event/push/change/standard"
VAULT_PASSWORD = "correct horse battery staple"


# --------------------------------------------------------------------------- helpers


def assert_secret_free(secrets, **texts):
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in {name}"


def assert_ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def unexpected(result):
    """True when a failed task result comes from an exception in the plugin rather than from its own check.

    ansible-core 2.19+ puts ``exception: "(traceback unavailable)"`` in every failed result, so the key
    alone says nothing; an unhandled exception shows as "Task failed: <error>" (2.19+) or
    "Unexpected failure during module execution: <error>" (2.16) instead of the plugin's message.
    """
    msg = result.get("msg", "")
    return msg.startswith(("Task failed:", "Unexpected failure")) or "Traceback" in str(result.get("exception", ""))


def assert_no_crash(text):
    """No traceback and no unhandled exception in ansible-playbook output (default callback, any verbosity)."""
    assert "Traceback" not in text
    assert "exception occurred during task execution" not in text.lower()  # 2.16
    crashed = [line for line in text.splitlines() if line.startswith("[ERROR]: Task failed: ") and not line.startswith("[ERROR]: Task failed: Action failed: ")]
    assert not crashed, crashed  # 2.19+: an action's own failure reads "Task failed: Action failed: <msg>"


@pytest.fixture
def project(tmp_path):
    """A copy of tests/functional/change_event to add per-run files to."""
    dst = tmp_path / "project"
    shutil.copytree(HERE, dst)
    return dst


def write_vaulted_push_url(project, ansible_env, push_url):
    """inventory/group_vars/web/vault.yml with flashduty_push_url encrypted by ansible-vault; returns the password file."""
    password_file = project / "vault-password.txt"
    password_file.write_text(VAULT_PASSWORD + "\n", encoding="utf-8")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(password_file), "--stdin-name", "flashduty_push_url"],
        input=push_url, env=ansible_env, cwd=str(project), capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "!vault" in proc.stdout and push_url not in proc.stdout
    group_vars = project / "inventory" / "group_vars" / "web"
    group_vars.mkdir(parents=True)
    (group_vars / "vault.yml").write_text("---\n" + proc.stdout, encoding="utf-8")
    return password_file


def read_results(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- vaulted variable, run_once on a group

def test_vaulted_push_url_in_group_vars_no_push_url_no_delegate_to(project, ansible_env, receiver, run_playbook, tmp_path):
    password_file = write_vaulted_push_url(project, ansible_env, receiver.push_url)
    log_file = tmp_path / "ansible.log"
    results_file = tmp_path / "results.json"
    env = dict(ansible_env, ANSIBLE_LOG_PATH=str(log_file))
    proc = run_playbook(["-i", project / "inventory" / "hosts.yml", project / "vaulted.yml", "--vault-password-file", password_file,
                         "-e", "app_version=1.2.0", "-e", f"results_file={results_file}", "-vvvv"], env=env)
    assert_ok(proc)

    deploy, variables = receiver.events  # run_once: one event per task for three hosts; the muted task sent nothing
    assert deploy == {
        "change_status": "Done",
        "change_key": "deploy-1.2.0",
        "title": "Deploy checkout 1.2.0",
        "description": "Rolled out to web1,web2,web3",
        "link": "https://ci.example.com/jobs/42",
        "event_time": 1795714800,
        # flashduty_labels merged under the task's labels (the task's "service" wins); null dropped
        "labels": {"team": "storefront", "service": "checkout", "replicas": "3", "canary": "true", "zones": '["a","b"]'},
    }
    assert variables == {"change_status": "Processing", "change_key": "CHG-7", "title": "Rotate certificates",
                         "link": "https://tickets.example.com/CHG-7", "event_time": variables["event_time"]}

    results = read_results(results_file)
    first, second = receiver.records
    assert results["deploy"]["changed"] is True
    assert results["deploy"]["request_id"] == first["request_id"] and results["deploy"]["status_code"] == 200
    assert results["deploy"]["event"] == deploy
    assert results["deploy"]["endpoint"] == f"{receiver.base_url}{PUSH}?integration_key=****"
    assert results["variables"]["request_id"] == second["request_id"]
    assert results["muted"].get("skipped") is True and "flashduty_enabled" in results["muted"]["msg"]
    assert "skipping: [web1]" in proc.stdout

    log = log_file.read_text(encoding="utf-8")
    assert "Tell Flashduty the deploy finished" in log
    assert_secret_free([receiver.integration_key, VAULT_PASSWORD], stdout=proc.stdout, stderr=proc.stderr, log=log, results=json.dumps(results))
    assert_no_crash(proc.stdout + proc.stderr + log)


def test_check_mode_returns_the_event_and_sends_nothing(project, ansible_env, receiver, run_playbook, tmp_path):
    password_file = write_vaulted_push_url(project, ansible_env, receiver.push_url)
    results_file = tmp_path / "results.json"
    proc = run_playbook(["-i", project / "inventory" / "hosts.yml", project / "vaulted.yml", "--vault-password-file", password_file,
                         "-e", "app_version=2.0.0", "-e", f"results_file={results_file}", "--check"])
    assert_ok(proc)
    assert receiver.requests == []
    results = read_results(results_file)
    deploy = results["deploy"]
    assert deploy["changed"] is True and not deploy.get("failed") and "check mode" in deploy["msg"]
    assert deploy["event"]["change_key"] == "deploy-2.0.0" and deploy["event"]["event_time"] == 1795714800
    assert deploy["event"]["labels"]["canary"] == "true"
    assert "request_id" not in deploy
    assert results["variables"]["event"]["change_key"] == "CHG-7"
    assert results["muted"].get("skipped") is True
    assert_secret_free([receiver.integration_key], stdout=proc.stdout, stderr=proc.stderr)


# --------------------------------------------------------------------------- endpoint sources

def test_endpoint_sources_and_precedence(project, ansible_env, receiver, run_playbook, tmp_path):
    var_receiver = Receiver(integration_key="b" * 32, quiet=True).start()
    env_receiver = Receiver(integration_key="c" * 32, quiet=True).start()
    try:
        extra = {
            "arg_push_url": receiver.push_url, "arg_key": receiver.integration_key, "arg_api_url": receiver.base_url,
            "var_push_url": var_receiver.push_url, "var_key": var_receiver.integration_key, "var_api_url": var_receiver.base_url,
        }
        extra_file = tmp_path / "endpoints.json"
        extra_file.write_text(json.dumps(extra), encoding="utf-8")
        env = dict(ansible_env, FLASHDUTY_PUSH_URL=env_receiver.push_url, FLASHDUTY_API_URL=env_receiver.base_url)
        proc = run_playbook([project / "sources.yml", "-e", f"@{extra_file}"], env=env)
        assert_ok(proc)
        got = {
            "arg": [e["change_key"] for e in receiver.events],
            "var": [e["change_key"] for e in var_receiver.events],
            "env": [e["change_key"] for e in env_receiver.events],
        }
        assert got == {
            "arg": ["precedence-argument", "key-arguments", "key-argument-api-variable", "module-defaults", "module-defaults"],
            "var": ["precedence-variable", "key-variables"],
            "env": ["precedence-environment"],
        }
        assert [e["change_status"] for e in receiver.events][-2:] == ["Processing", "Done"]
        assert env_receiver.events[0]["change_status"] == "Processing"  # the "status" alias
        assert_secret_free([receiver.integration_key, var_receiver.integration_key, env_receiver.integration_key], stdout=proc.stdout, stderr=proc.stderr)
    finally:
        var_receiver.stop()
        env_receiver.stop()


# --------------------------------------------------------------------------- content cleaned up, not refused

def test_the_key_in_event_content_is_masked_and_label_names_rewritten(project, ansible_env, receiver, run_playbook, tmp_path):
    password_file = write_vaulted_push_url(project, ansible_env, receiver.push_url)
    log_file = tmp_path / "ansible.log"
    results_file = tmp_path / "results.json"
    proc = run_playbook(["-i", project / "inventory" / "hosts.yml", project / "content.yml", "--vault-password-file", password_file,
                         "-e", f"results_file={results_file}", "-vvvv"], env=dict(ansible_env, ANSIBLE_LOG_PATH=str(log_file)))
    assert_ok(proc)
    assert_no_crash(proc.stdout + proc.stderr)
    results = read_results(results_file)
    secret = receiver.integration_key
    assert_secret_free([secret], stdout=proc.stdout, stderr=proc.stderr, log=log_file.read_text(encoding="utf-8"),
                       results=json.dumps(results), received=json.dumps(receiver.requests))

    content, long_title = receiver.events
    masked_url = f"{receiver.base_url}{PUSH}?integration_key=****"
    assert content == {
        "change_status": "Done", "change_key": "content-1", "title": f"Deploy via {masked_url}",
        "description": "pushed with integration_key=****", "event_time": content["event_time"],
        "labels": {"url": masked_url, "k8s_cluster": "eu1", "app_kubernetes_io_name": "shop", "_2fa": "required"},
    }
    assert results["content"]["event"] == content and results["content"]["changed"] is True
    output = " ".join((proc.stdout + proc.stderr).split())  # 2.16 wraps long warnings over several lines
    assert output.count("held the Flashduty integration key or push URL; it was masked as ****") == 1
    assert "title, description, labels.url held the Flashduty integration key" in output
    assert output.count("label names rewritten to Prometheus style") == 1
    assert ("'k8s-cluster' -> 'k8s_cluster', 'app.kubernetes.io/name' -> 'app_kubernetes_io_name', '2fa' -> '_2fa'" in output)

    assert len(long_title["title"]) == 512 and long_title["title"].endswith("...")
    assert "title: was 5000 characters long and was truncated to 512" in output
    assert results["far_time"]["event"]["event_time"] == 253402300799 and not results["far_time"].get("failed")


# --------------------------------------------------------------------------- bad inputs

# result name -> what its one-line message must contain (the field, and the rule)
BAD_INPUTS = {
    "vault_missing": ["flashduty_push_url", "decrypt"],
    "wrong_status": ["change_status", "Planned, Ready, Processing, Canceled, Done"],
    "labels_not_a_map": ["labels", "dict"],
    "too_many_labels": ["labels", "51 labels", "at most 50"],
    "long_label_key": ["labels", "200 characters", "at most 128"],
    "bad_label_key": ["labels", "label names 'bad-key' and 'bad_key' are both 'bad_key' in Prometheus style; rename one"],
    "int_label_key": ["labels", "label names '1' and '_1' are both '_1'"],
    "shared_labels_not_a_map": ["flashduty_labels", "mapping"],
    "milliseconds": ["event_time", "milliseconds"],
    "long_change_key": ["change_key: is 5000 characters long; at most 256 are allowed"],
    "negative_timeout": ["timeout: must be greater than 0 and at most 300 seconds, got -1"],
    "zero_timeout": ["timeout: must be greater than 0 and at most 300 seconds, got 0"],
    "too_many_retries": ["retries: must be from 0 to 10, got 11"],
    "zero_total_timeout": ["total_timeout: must be greater than 0 and at most 3600 seconds, got 0"],
    "infinite_time": ["event_time"],
    "bad_scheme": ["push_url", "https://"],
    "keyless_url": ["push_url", "integration_key"],
    "exclusive": ["push_url", "integration_key", "mutually exclusive"],
    "wrong_key_answer": ["InvalidParameter", "integration_key is not a valid one", "request_id: "],
    "unreachable": ["127.0.0.1", "after 3 attempts", "egress"],
}


@pytest.fixture
def bad_run(project, ansible_env, receiver, tmp_path):
    """Everything a bad_inputs.yml run needs; run it with ``bad_run['args']``."""
    write_vaulted_push_url(project, ansible_env, receiver.push_url)  # encrypted, but the run gets no vault password
    wrong_key = "f" * 32
    port = closed_port()
    results_file = tmp_path / "results.json"
    extra = {
        "results_file": str(results_file),
        "good_push_url": receiver.push_url,
        "bad_status": "done",
        "labels_list": ["service", "checkout"],
        "labels_51": {f"label_{i}": i for i in range(51)},
        "labels_long_key": {"k" * 200: "v"},
        "labels_bad_key": {"bad-key": "v", "bad_key": "w"},
        "ms_time": 1700000000000,
        "ftp_push_url": f"ftp://127.0.0.1:{receiver.port}{PUSH}?integration_key={receiver.integration_key}",
        "keyless_push_url": f"{receiver.base_url}{PUSH}",
        "wrong_key": wrong_key,
        "wrong_key_push_url": f"{receiver.base_url}{PUSH}?integration_key={wrong_key}",
        "closed_port_push_url": f"http://127.0.0.1:{port}{PUSH}?integration_key={receiver.integration_key}",
    }
    extra_file = tmp_path / "bad.json"
    extra_file.write_text(json.dumps(extra), encoding="utf-8")
    return {
        "args": ["-i", project / "inventory" / "hosts.yml", project / "bad_inputs.yml", "-e", f"@{extra_file}"],
        "results_file": results_file,
        "secrets": [receiver.integration_key, wrong_key],
        "port": port,
    }


def test_bad_inputs_fail_with_one_line_messages_naming_the_field(bad_run, receiver, run_playbook):
    proc = run_playbook(bad_run["args"])
    assert_ok(proc)  # every failure is ignored, so the run itself succeeds
    results = read_results(bad_run["results_file"])
    assert sorted(results) == sorted(BAD_INPUTS)
    problems = []
    for name, fragments in BAD_INPUTS.items():
        result = results[name]
        msg = result.get("msg", "")
        if not result.get("failed"):
            problems.append(f"{name}: did not fail: {result}")
        elif "\n" in msg or any(fragment not in msg for fragment in fragments) or unexpected(result):
            problems.append(f"{name}: {msg!r} (want {fragments}){' from an unexpected exception' if unexpected(result) else ''}")
    assert not problems, "\n".join(problems)

    # Nothing bad was accepted; the one request that reached the receiver is the wrong key's, quoted by request_id.
    assert receiver.events == []
    (rejected,) = receiver.requests
    assert (rejected["status"], rejected["error_code"]) == (400, "InvalidParameter")
    assert results["wrong_key_answer"]["request_id"] == rejected["request_id"]
    assert f"(request_id: {rejected['request_id']})" in results["wrong_key_answer"]["msg"]
    assert results["wrong_key_answer"]["status_code"] == 400
    assert f"127.0.0.1:{bad_run['port']}{PUSH}?integration_key=****" in results["unreachable"]["msg"]
    for name in ("unreachable", "wrong_key_answer"):
        assert "integration_key=****" in results[name]["msg"]
    assert results["bad_scheme"]["msg"].endswith(f"(got ftp://127.0.0.1:{receiver.port}{PUSH}?****)")  # a bad URL's query is masked whole

    # What a person reads: one "fatal" line per failed task, with the message in it, and no traceback.
    output = proc.stdout + proc.stderr
    assert_no_crash(output)
    fatal = [line for line in proc.stdout.splitlines() if line.startswith("fatal: [")]
    assert len(fatal) == len(BAD_INPUTS), "\n".join(fatal)
    assert any('"msg": "value of change_status must be one of: Planned, Ready, Processing, Canceled, Done, got: done"' in line for line in fatal)
    assert any(line.startswith("fatal: [localhost]: FAILED! =>") and "HTTP 400 InvalidParameter" in line
               and rejected["request_id"] in line for line in fatal)
    assert any(line.startswith("fatal: [web1]: FAILED! =>") and "flashduty_push_url" in line for line in fatal)
    assert_secret_free(bad_run["secrets"], stdout=proc.stdout, stderr=proc.stderr, results=json.dumps(results))


def test_bad_inputs_at_vvvv_with_a_log_file_never_show_the_key(bad_run, ansible_env, run_playbook, tmp_path):
    log_file = tmp_path / "ansible.log"
    proc = run_playbook(bad_run["args"] + ["-vvvv"], env=dict(ansible_env, ANSIBLE_LOG_PATH=str(log_file)))
    assert_ok(proc)
    log = log_file.read_text(encoding="utf-8")
    assert "Wrong integration key" in log and "integration_key=****" in log
    assert_secret_free(bad_run["secrets"], stdout=proc.stdout, stderr=proc.stderr, log=log)
    for text in (proc.stdout, proc.stderr, log):
        assert_no_crash(text)


def test_missing_vault_password_fails_the_task_not_the_run(project, ansible_env, receiver, run_playbook, tmp_path):
    write_vaulted_push_url(project, ansible_env, receiver.push_url)
    proc = run_playbook(["-i", project / "inventory" / "hosts.yml", project / "vaulted.yml",
                         "-e", "app_version=1", "-e", f"results_file={tmp_path / 'r.json'}"])
    assert proc.returncode == 2
    fatal = [line for line in proc.stdout.splitlines() if line.startswith("fatal: [")]
    assert len(fatal) == 1 and "flashduty_push_url: could not be templated or decrypted" in fatal[0], proc.stdout
    assert_no_crash(proc.stdout + proc.stderr)
    assert receiver.requests == []


# --------------------------------------------------------------------------- the module without its action plugin

def run_module(repo_root, tmp_path, args, env_extra=None):
    """Run plugins/modules/change_event.py directly, as Ansible would on a managed host."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "FLASHDUTY_"))}
    env["PYTHONPATH"] = str(repo_root / ".build" / "collections")
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(repo_root / "plugins" / "modules" / "change_event.py"), str(args_file)],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"^\{.*\}\s*$", proc.stdout, re.MULTILINE | re.DOTALL)
    assert match, f"no JSON from the module: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(match.group(0))


def test_module_runs_standalone(repo_root, receiver, tmp_path):
    proc, result = run_module(repo_root, tmp_path, {
        "push_url": receiver.push_url, "change_key": "standalone", "change_status": "Done", "title": "Module alone",
        "labels": {"canary": True, "replicas": 2}, "event_time": "2026-11-26T17:40:00+01:00",
    })
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = receiver.records
    assert record["event"] == {"change_status": "Done", "change_key": "standalone", "title": "Module alone", "event_time": 1795711200,
                               "labels": {"canary": "true", "replicas": "2"}}
    assert result["changed"] is True and result["request_id"] == record["request_id"] and result["status_code"] == 200
    assert result["event"] == record["event"]
    assert_secret_free([receiver.integration_key], stdout=proc.stdout, stderr=proc.stderr)


def test_module_standalone_with_environment_and_check_mode(repo_root, receiver, tmp_path):
    env = {"FLASHDUTY_INTEGRATION_KEY": receiver.integration_key, "FLASHDUTY_API_URL": receiver.base_url}
    proc, result = run_module(repo_root, tmp_path, {"change_key": "k", "status": "Planned", "title": "t", "_ansible_check_mode": True}, env)
    assert proc.returncode == 0 and result["changed"] is True and "check mode" in result["msg"]
    assert receiver.requests == []
    proc, result = run_module(repo_root, tmp_path, {"change_key": "k", "status": "Planned", "title": "t"}, env)
    assert proc.returncode == 0 and result["request_id"] == receiver.records[0]["request_id"]
    assert result["endpoint"] == f"{receiver.base_url}{PUSH}?integration_key=****"
    assert_secret_free([receiver.integration_key], stdout=proc.stdout, stderr=proc.stderr)


def test_module_standalone_failure(repo_root, receiver, tmp_path):
    proc, result = run_module(repo_root, tmp_path, {"push_url": receiver.push_url, "change_key": "k", "change_status": "Done", "title": "t",
                                                    "labels": {"k" * 129: "v"}})
    assert proc.returncode == 1 and result["failed"] is True
    assert result["msg"].startswith("labels: ") and "at most 128" in result["msg"]
    assert receiver.requests == []
    assert_secret_free([receiver.integration_key], stdout=proc.stdout, stderr=proc.stderr)


# --------------------------------------------------------------------------- ansible.cfg, the last source

INI_PLAYBOOK = """
- name: The [flashduty] section of ansible.cfg comes after the variables and the environment
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Send with nothing but ansible.cfg, or the environment when it is set
      flashcat.flashduty.change_event:
        change_key: "{{ key }}"
        change_status: Done
        title: From the configuration
"""


def test_push_url_from_ansible_cfg_after_the_environment(ansible_env, receiver, run_playbook, tmp_path):
    env_receiver = Receiver(integration_key="d" * 32, quiet=True).start()
    try:
        # '%' in a push URL is not an interpolation, as for Ansible's own settings.
        config = tmp_path / "ansible.cfg"
        config.write_text("[flashduty]\npush_url = %s&note=100%%\n" % receiver.push_url, encoding="utf-8")
        (tmp_path / "ini.yml").write_text(INI_PLAYBOOK, encoding="utf-8")
        env = dict(ansible_env, ANSIBLE_CONFIG=str(config))
        assert_ok(run_playbook([tmp_path / "ini.yml", "-e", "key=from-ini"], env=env))
        env["FLASHDUTY_PUSH_URL"] = env_receiver.push_url
        proc = run_playbook([tmp_path / "ini.yml", "-e", "key=from-env"], env=env)
        assert_ok(proc)
        assert [e["change_key"] for e in receiver.events] == ["from-ini"]
        assert [e["change_key"] for e in env_receiver.events] == ["from-env"]
        assert_secret_free([receiver.integration_key, env_receiver.integration_key], stdout=proc.stdout, stderr=proc.stderr)
    finally:
        env_receiver.stop()
