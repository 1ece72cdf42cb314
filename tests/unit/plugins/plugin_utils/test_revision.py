"""Unit tests of plugins/plugin_utils/_revision.py with real git work trees."""
# pylint: disable=missing-function-docstring

import shutil
import subprocess
import time

import pytest

from ansible_collections.flashcat.flashduty.plugins.plugin_utils._revision import ci_revision, git_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(directory, *args):
    return subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@example.com", "HOME": str(directory), "PATH": "/usr/bin:/bin"}).stdout


def test_short_commit_and_dirty_marker(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "site.yml").write_text("---\n", encoding="utf-8")
    git(tmp_path, "add", "site.yml")
    git(tmp_path, "commit", "-qm", "first")
    head = git(tmp_path, "rev-parse", "HEAD").strip()
    (tmp_path / "roles").mkdir()
    assert git_revision(str(tmp_path / "roles")) == head[:12]
    (tmp_path / "untracked.yml").write_text("---\n", encoding="utf-8")
    assert git_revision(str(tmp_path)) == head[:12]  # untracked files do not make it dirty
    (tmp_path / "site.yml").write_text("--- # changed\n", encoding="utf-8")
    assert git_revision(str(tmp_path)) == head[:12] + "-dirty"


def test_no_revision_outside_a_repository_or_before_the_first_commit(tmp_path):
    assert git_revision(str(tmp_path)) is None
    assert git_revision(str(tmp_path / "missing")) is None
    assert git_revision(None) is None
    git(tmp_path, "init", "-q")
    assert git_revision(str(tmp_path)) is None


def test_ci_commit_is_the_fallback():
    assert ci_revision({"ci_commit": "0123456789abcdef0123"}) == "0123456789ab"
    assert ci_revision({"ci_system": "jenkins"}) is None and ci_revision(None) is None
    assert ci_revision({"ci_commit": " abc\n"}) == "abc"


def test_reading_it_costs_milliseconds(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a").write_text("a", encoding="utf-8")
    git(tmp_path, "add", "a")
    git(tmp_path, "commit", "-qm", "a")
    started = time.perf_counter()
    for _round in range(10):
        git_revision(str(tmp_path))
    per_read = (time.perf_counter() - started) / 10
    print("git revision: %.1f ms per read" % (per_read * 1000))
    assert per_read < 0.5  # once per playbook; two git processes
