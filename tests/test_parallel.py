"""The engine for piles of items (`latentsync.parallel`): the same results in this process, in worker processes and
on a real local Ray cluster; failures and dead workers isolated; resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentsync.errors import ConfigError
from latentsync.parallel import Item, RunRecord, fingerprint, ray_cluster, run_items, worker_cache, worker_pool

REPO_ROOT = Path(__file__).resolve().parents[1]


def square_or_fail(payload, report):
    """The test task: squares ``payload["value"]``, fails on 3, kills its own process on "die"."""
    report(0, 2)
    if payload["value"] == 3:
        raise ValueError("three is not welcome")
    if payload["value"] == "die":
        os._exit(7)
    calls = worker_cache("calls", lambda: {"count": 0})
    calls["count"] += 1
    report(1, 2)
    if payload.get("log"):
        with open(payload["log"], "a") as log:
            log.write(f"{payload['value']}\n")
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    return {"square": payload["value"] ** 2, "pid": os.getpid()}


def make_items(values, **extra):
    return [Item(key=f"item-{value}", payload={"value": value, **extra}, fingerprint=fingerprint(value))
            for value in values]


def summary(results):
    return [(result.key, result.status, (result.record or {}).get("square"), result.error) for result in results]


@pytest.fixture(scope="module")
def serial_results():
    return run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), workers=1, show_progress=False)


def test_serial_runs_every_item_and_isolates_the_failure(serial_results):
    assert summary(serial_results) == [
        ("item-1", "done", 1, None),
        ("item-2", "done", 4, None),
        ("item-3", "failed", None, "ValueError: three is not welcome"),
        ("item-4", "done", 16, None),
        ("item-5", "done", 25, None),
    ]
    assert {result.record["pid"] for result in serial_results if result.ok} == {os.getpid()}


def test_two_worker_processes_give_the_same_results(serial_results):
    results = run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), workers=2, show_progress=False)
    assert summary(results) == summary(serial_results)
    pids = {result.record["pid"] for result in results if result.ok}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_local_ray_cluster_gives_the_same_results(serial_results):
    pytest.importorskip("ray", reason="ray is the optional cluster extra (pip install 'ray>=2.9')")
    results = run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), workers=2, ray_address="local",
                        show_progress=False)
    assert summary(results) == summary(serial_results)
    assert os.getpid() not in {result.record["pid"] for result in results if result.ok}


def test_a_dead_worker_fails_its_item_only():
    results = run_items(square_or_fail, make_items([1, "die", 2, 4]), workers=2, show_progress=False)
    statuses = {result.key: result.status for result in results}
    assert statuses == {"item-1": "done", "item-die": "failed", "item-2": "done", "item-4": "done"}
    assert results[1].error.startswith("WorkerCrashed:")


def test_run_record_skips_finished_items_and_redoes_changed_ones(tmp_path):
    record_path = tmp_path / "run.jsonl"
    log = tmp_path / "calls.log"
    first = run_items(square_or_fail, make_items([1, 2, 3], log=str(log)), record=RunRecord(record_path),
                      show_progress=False)
    assert [result.status for result in first] == ["done", "done", "failed"]
    assert log.read_text().split() == ["1", "2"]

    items = make_items([1, 2, 3], log=str(log))
    items[1] = Item(items[1].key, items[1].payload, fingerprint=fingerprint(2, "other option"))
    second = run_items(square_or_fail, items, record=RunRecord(record_path), show_progress=False)
    # 1 finished with the same fingerprint: skipped with its record; 2 changed: redone; 3 failed: tried again.
    assert summary(second) == [("item-1", "skipped", 1, None), ("item-2", "done", 4, None),
                               ("item-3", "failed", None, "ValueError: three is not welcome")]
    assert log.read_text().split() == ["1", "2", "2"]


def test_run_record_ignores_a_torn_last_line(tmp_path):
    record_path = tmp_path / "run.jsonl"
    run_items(square_or_fail, make_items([1]), record=RunRecord(record_path), show_progress=False)
    with open(record_path, "a") as file:
        file.write('{"key": "item-2", "fingerp')
    assert RunRecord(record_path).lookup("item-1", fingerprint(1)) == json.loads(
        record_path.read_text().splitlines()[0])["record"]
    assert RunRecord(record_path).lookup("item-2", fingerprint(2)) is None


def test_a_killed_run_resumes_without_redoing_finished_items(tmp_path):
    record_path, log = tmp_path / "run.jsonl", tmp_path / "calls.log"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "from test_parallel import make_items, square_or_fail;"
        "from latentsync.parallel import RunRecord, run_items;"
        "run_items(square_or_fail, make_items(range(10, 20), log=sys.argv[3], sleep=0.5),"
        " record=RunRecord(sys.argv[4]), show_progress=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(REPO_ROOT), str(REPO_ROOT / "tests"), str(log),
                                str(record_path)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not record_path.exists() or len(record_path.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {json.loads(line)["key"] for line in record_path.read_text().splitlines()}
    assert 3 <= len(finished) < 10

    results = run_items(square_or_fail, make_items(range(10, 20), log=str(log)), record=RunRecord(record_path),
                        show_progress=False)
    assert {result.key for result in results if result.status == "skipped"} == finished
    assert all(result.ok for result in results)
    # Each item ran once to completion, except at most the one the kill interrupted after its log line.
    calls = log.read_text().split()
    assert sorted(set(calls)) == [str(value) for value in range(10, 20)]
    assert len(calls) <= 11


def test_duplicate_keys_and_bad_worker_counts_are_refused():
    with pytest.raises(ConfigError, match="own key"):
        run_items(square_or_fail, [Item("a", {"value": 1}), Item("a", {"value": 2})], show_progress=False)
    with pytest.raises(ConfigError, match="at least 1"):
        run_items(square_or_fail, make_items([1]), workers=0, show_progress=False)


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"b": 1, "a": Path("x")}, 2.5) == fingerprint({"a": "x", "b": 1}, 2.5)
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_ray_cluster_keeps_one_connection_for_several_runs(serial_results):
    ray = pytest.importorskip("ray", reason="ray is the optional cluster extra (pip install 'ray>=2.9')")
    with ray_cluster("local", 2):
        first = run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), ray_address="local", show_progress=False)
        context = ray.get_runtime_context().get_job_id()
        second = run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), ray_address="local", show_progress=False)
        assert ray.get_runtime_context().get_job_id() == context  # the same connection, not a new cluster
    assert not ray.is_initialized()
    assert summary(first) == summary(second) == summary(serial_results)


def test_progress_counts_items_and_their_weights(capsys):
    items = [Item(key=f"clip-{value}", payload={"value": value}, weight=10 * value) for value in (1, 2, 4)]
    run_items(square_or_fail, items, label="rows", weight_unit="frames")
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("rows: 3/3" in line and "70/70 frames" in line for line in lines)
    assert any("rows: 1/3" in line and "10/70 frames" in line for line in lines)


def test_worker_pool_keeps_the_processes_for_several_runs(serial_results):
    with worker_pool(2):
        first = run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), workers=2, show_progress=False)
        second = run_items(square_or_fail, make_items([1, 2, 3, 4, 5]), workers=2, show_progress=False)
    assert summary(first) == summary(second) == summary(serial_results)
    pids = {result.record["pid"] for result in first + second if result.ok}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # the second run used the first run's processes


def report_often(payload, report):
    """A task that reports its progress 500 times, as a long clip does frame by frame."""
    for done in range(500):
        report(done, 500)
    return {}


def test_progress_in_a_log_file_is_redrawn_per_item_not_per_report(capfd):
    """Written to a file (not a terminal), the line is drawn at the start and when an item ends, not for each of
    the 1000 reports: a 20-hour data preparation would otherwise fill its log with redraws."""
    run_items(report_often, make_items([1, 2]), workers=1, label="clips")
    redraws = capfd.readouterr().err.count("clips: ")
    assert 3 <= redraws <= 8, redraws
