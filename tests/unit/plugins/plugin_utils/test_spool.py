"""Tests for plugins/plugin_utils/_spool.py: the on-disk spool, on a real directory."""
# pylint: disable=missing-function-docstring,protected-access

import json
import os
import stat
import threading
import time

import pytest

from ansible_collections.flashcat.flashduty.plugins.plugin_utils import _spool
from ansible_collections.flashcat.flashduty.plugins.module_utils._flashduty import endpoint_for
from ansible_collections.flashcat.flashduty.plugins.plugin_utils._spool import Spool, SpoolError

KEY = "5ec2e7" + "0123456789abcdef" * 2
URL = endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + KEY)
OTHER_URL = endpoint_for("https://api.flashcat.cloud/event/push/change/standard?integration_key=" + "f" * 32)


def record(index, key="change-1", error=None):
    event = {"change_status": "Processing" if index % 2 == 0 else "Done", "change_key": key,
             "title": "event %d" % index, "event_time": 1700000000 + index}
    return {"event": event, "first_failure": 1700000100.5 + index, "attempts": 4,
            "last_error": error or "could not reach api.flashcat.cloud: connection refused"}


def titles(records):
    return [r["event"]["title"] for r in records]


def all_bytes(path):
    data = b""
    for root, _dirs, files in os.walk(path):
        for name in files + _dirs:
            data += name.encode() + b"\n"
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                data += handle.read()
    return data


def test_write_claim_finish_round_trip(tmp_path):
    spool = Spool(tmp_path / "a" / "spool")
    assert spool.pending(URL) == 0  # a missing directory is an empty spool
    assert spool.write(URL, [record(0), record(1)]) == 0
    assert spool.write(URL, [record(2)]) == 0
    assert spool.pending(URL) == 3 and spool.pending(OTHER_URL) == 0 and spool.total() == 3

    batches, problems = spool.claim(URL)
    assert problems == []
    assert [len(b.records) for b in batches] == [2, 1]  # oldest batch first
    assert titles(batches[0].records + batches[1].records) == ["event 0", "event 1", "event 2"]
    first = batches[0].records[0]
    assert first["event"]["event_time"] == 1700000000  # the original time, not the spooling time
    assert first["attempts"] == 4 and first["first_failure"] == 1700000100.5 and "connection refused" in first["last_error"]
    with open(batches[0].claim_path, encoding="utf-8") as handle:
        assert json.load(handle)["endpoint_url"].endswith("?integration_key=****")
    # Claimed: another run sees nothing, and claiming again yields nothing.
    assert spool.pending(URL) == 0 and Spool(spool.path).claim(URL) == ([], [])
    assert spool.total() == 3  # claimed files still count against the bound

    spool.finish(batches[0], URL)
    spool.finish(batches[1], URL, remaining=batches[1].records)
    assert spool.total() == 1 and spool.pending(URL) == 1
    again, _problems = spool.claim(URL)
    assert titles(again[0].records) == ["event 2"]


def test_given_back_records_keep_their_place(tmp_path):
    spool = Spool(tmp_path)
    spool.write(URL, [record(0), record(1), record(2)])
    batches, _problems = spool.claim(URL)
    spool.write(URL, [record(3)])  # newer, written while the first batch was out
    spool.finish(batches[0], URL, remaining=batches[0].records[1:])  # event 0 was delivered
    batches, _problems = spool.claim(URL)
    assert [titles(b.records) for b in batches] == [["event 1", "event 2"], ["event 3"]]


def test_permissions_whatever_the_umask(tmp_path):
    old = os.umask(0o777)  # the worst umask: files and directories would get no permission at all
    try:
        spool = Spool(tmp_path / "deep" / "spool")
        spool.write(URL, [record(0)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o700
    names = os.listdir(spool.path)
    assert len(names) == 1 and not names[0].startswith(".")
    assert stat.S_IMODE(os.stat(os.path.join(spool.path, names[0])).st_mode) == 0o600


def test_a_directory_open_to_others_is_refused_not_chmodded(tmp_path):
    path = tmp_path / "spool"
    path.mkdir()
    os.chmod(path, 0o755)
    with pytest.raises(SpoolError, match=r"open to other users \(mode 0755\).*chmod 700"):
        Spool(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755 and os.listdir(path) == []


def test_a_directory_created_by_someone_else_meanwhile_is_checked(tmp_path):
    path = tmp_path / "spool"
    spool = Spool(path)  # missing: fine until it is written to
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(SpoolError, match="open to other users"):
        spool.write(URL, [record(0)])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777 and os.listdir(path) == []


def other_users_directory(path, uid=4242):
    """A directory owned by another user (the tests may run as root: chown is how to get one)."""
    path.mkdir(mode=0o700)
    try:
        os.chown(path, uid, uid)
    except PermissionError:
        pytest.skip("needs root to give a directory to another user")
    return path


@pytest.mark.parametrize("owner", ["self", "other", "root"])
def test_a_symlinked_spool_directory_is_refused_and_its_target_untouched(tmp_path, owner):
    target = tmp_path / "target"
    if owner == "other":
        other_users_directory(target)
    else:
        target.mkdir()
        if owner == "root" and os.geteuid() != 0:
            pytest.skip("the root-owned target needs root")
    os.chmod(target, 0o755)
    (target / "precious").write_text("keep me")
    link = tmp_path / "spool"
    link.symlink_to(target)
    before = (os.stat(target).st_mode, os.stat(target).st_uid, sorted(os.listdir(target)))
    with pytest.raises(SpoolError, match="is a symbolic link; refusing to follow it"):
        Spool(link)
    # A Spool made before the link was planted does not follow it either, whatever it is asked to do.
    spool = Spool(tmp_path / "later")
    (tmp_path / "later").symlink_to(target)
    for action in (lambda: spool.write(URL, [record(0)]), lambda: spool.claim(URL), lambda: spool.pending(URL), spool.total):
        with pytest.raises(SpoolError, match="symbolic link"):
            action()
    assert (os.stat(target).st_mode, os.stat(target).st_uid, sorted(os.listdir(target))) == before
    assert (target / "precious").read_text() == "keep me"


def test_a_directory_of_another_user_is_refused(tmp_path):
    path = other_users_directory(tmp_path / "spool")
    with pytest.raises(SpoolError, match=r"belongs to another user \(uid 4242\)"):
        Spool(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700 and os.listdir(path) == []


def test_links_and_fifos_planted_inside_are_never_followed(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.write(URL, [record(0)])
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"format": "flashcat.flashduty.spool/1", "endpoint": URL.fingerprint, "records": []}))
    os.chmod(secret, 0o640)
    planted_link, planted_fifo = ("%s.%s.1.json" % (_spool.new_stamp(), URL.fingerprint[:16]) for _number in range(2))
    os.symlink(secret, os.path.join(spool.path, planted_link))
    os.mkfifo(os.path.join(spool.path, planted_fifo))
    started = time.monotonic()
    batches, problems = spool.claim(URL)
    assert time.monotonic() - started < 5  # the FIFO did not block the run
    assert titles([r for b in batches for r in b.records]) == ["event 0"]
    assert len(problems) == 2 and all("unreadable" in problem for problem in problems)
    assert os.path.islink(os.path.join(spool.path, planted_link + ".corrupt"))  # the link itself renamed, not its target
    assert secret.read_text().startswith('{"format"') and stat.S_IMODE(os.stat(secret).st_mode) == 0o640


def test_path_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "spool"
    path.write_text("not a directory")
    with pytest.raises(SpoolError, match="is not a directory"):
        Spool(path).write(URL, [record(0)])


def test_no_key_and_no_url_in_any_file(tmp_path):
    spool = Spool(tmp_path / "spool")
    leaky = "HTTP 500 InternalError: bad key " + KEY + " in " + URL.url  # a server that echoes the key back
    spool.write(URL, [record(0, error=leaky), record(1)])
    batches, _problems = spool.claim(URL)
    spool.finish(batches[0], URL, remaining=batches[0].records)
    data = all_bytes(spool.path)
    assert KEY.encode() not in data and b"integration_key=5ec" not in data
    assert URL.fingerprint.encode() in data  # the endpoint is known only by its fingerprint
    document = json.loads(data.split(b"\n", 1)[1])
    assert document["format"] == "flashcat.flashduty.spool/1"
    assert set(document) == {"format", "endpoint", "endpoint_url", "spooled_at", "records"}
    assert set(document["records"][0]) == {"event", "first_failure", "attempts", "last_error"}
    assert "****" in document["records"][0]["last_error"]


def test_bounded_oldest_dropped_first(tmp_path):
    spool = Spool(tmp_path, max_events=10)
    assert spool.write(URL, [record(i) for i in range(4)]) == 0
    assert spool.write(OTHER_URL, [record(i) for i in range(4, 8)]) == 0
    assert spool.write(URL, [record(i) for i in range(8, 13)]) == 3  # 13 > 10: events 0..2 go
    assert spool.total() == 10
    batches, _problems = spool.claim(URL)
    assert titles([r for b in batches for r in b.records]) == ["event %d" % i for i in (3, 8, 9, 10, 11, 12)]
    # A batch larger than the bound keeps its newest events.
    spool2 = Spool(tmp_path / "small", max_events=3)
    assert spool2.write(URL, [record(i) for i in range(5)]) == 2
    assert titles(spool2.claim(URL)[0][0].records) == ["event 2", "event 3", "event 4"]


def test_two_runs_never_claim_the_same_file(tmp_path):
    writer = Spool(tmp_path)
    for i in range(30):
        writer.write(URL, [record(i)])
    claimed = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def run():
        spool = Spool(tmp_path)  # each "run" has its own owner id
        start.wait()
        batches, _problems = spool.claim(URL)
        with lock:
            claimed.extend(r["event"]["title"] for b in batches for r in b.records)

    threads = [threading.Thread(target=run) for _number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(claimed) == sorted("event %d" % i for i in range(30))  # each exactly once


def test_a_dead_runs_claims_come_back_after_the_lease(tmp_path):
    Spool(tmp_path).write(URL, [record(0)])
    crashed = Spool(tmp_path)
    crashed_batches, _problems = crashed.claim(URL)  # and never finished
    assert len(crashed_batches) == 1
    assert Spool(tmp_path).claim(URL) == ([], [])  # within the lease: respected
    later = Spool(tmp_path, lease=0.5)
    time.sleep(0.6)
    assert later.pending(URL) == 1
    batches, _problems = later.claim(URL)
    assert titles(batches[0].records) == ["event 0"]
    assert Spool(tmp_path, lease=0.5).claim(URL) == ([], [])  # the new claim is fresh
    # The stalled run wakes up: its claim was taken over, so it gives nothing back.
    crashed.finish(crashed_batches[0], URL, remaining=crashed_batches[0].records)
    assert later.total() == 1
    later.finish(batches[0], URL)
    assert os.listdir(tmp_path) == []


def test_renew_keeps_a_claim(tmp_path):
    spool = Spool(tmp_path)
    spool.write(URL, [record(0)])
    batches, _problems = spool.claim(URL)
    assert spool.renew(batches[0]) and os.path.exists(batches[0].claim_path)
    os.unlink(batches[0].claim_path)  # taken over by someone else
    assert not spool.renew(batches[0])


def test_unreadable_file_is_set_aside(tmp_path):
    spool = Spool(tmp_path)
    spool.write(URL, [record(0)])
    name = os.listdir(tmp_path)[0]
    (tmp_path / name).write_text("{not json")
    spool.write(URL, [record(1)])
    batches, problems = spool.claim(URL)
    assert titles([r for b in batches for r in b.records]) == ["event 1"]
    assert len(problems) == 1 and "unreadable" in problems[0] and name in problems[0]
    assert (tmp_path / (name + ".corrupt")).exists()
    assert spool.pending(URL) == 0


def test_stale_temporary_files_are_removed(tmp_path):
    spool = Spool(tmp_path, lease=0.0)
    stale = tmp_path / ".tmp-1-deadbeef"
    stale.write_text("half a file")
    old = time.time() - 10
    os.utime(stale, (old, old))
    spool.write(URL, [record(0)])
    assert not stale.exists()


def test_stamps_sort_in_creation_order():
    stamps = [_spool.new_stamp() for _number in range(1000)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 1000
