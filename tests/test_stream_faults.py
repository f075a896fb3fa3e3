"""Online decoding when things go wrong: a stalled, gapped or vanished EEG stream, markers without data, a burst of
markers, mismatched channels or rates, bad options, Ctrl-C. Each is one clear line; decided epochs stay logged."""

from __future__ import annotations

import support_stream as ss  # noqa: I001 - first: points $LSLAPICFG at the loopback config before liblsl loads

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sa.decode.lsl import StreamSpec, find_stream
from sa.decode.online import OnlineOptions, StreamLost, StreamSession, read_session_log
from sa.decode.stream_cli import register


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ss.trained_model(tmp_path_factory)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return 1e-6 * np.random.default_rng(seed).standard_normal((n, len(ss.CH_NAMES)))


def _paced(eeg: ss.EEGOutlet, t0: float, seconds: float, chunk: int = 10, seed: int = 0) -> None:
    """Push `seconds` of noise stamped from t0, in real time."""
    n = int(round(seconds * eeg.sfreq))
    data = _noise(n, seed)
    for s in range(0, n, chunk):
        eeg.push(data[s:s + chunk], t0 + s / eeg.sfreq)
        time.sleep(chunk / eeg.sfreq)


def test_stall_gap_marker_without_data_and_vanishing_stream(model, tmp_path):
    ckpt, group, _, _ = model
    from mne_lsl.lsl import local_clock

    eeg = ss.EEGOutlet("st-eeg", ss.CH_NAMES, marker_name="st-mk")
    said = ss.Collector()
    log = tmp_path / "stall.jsonl"
    session = StreamSession(ckpt, group, eeg=StreamSpec(name="st-eeg"), markers=StreamSpec(name="st-mk"),
                            options=OnlineOptions(stall_s=0.4, lost_s=0.8), log=log, notify=said,
                            outlet_name="st-decisions")
    thread, box = ss.run_in_thread(session, duration=20)
    ss.wait_running(session)
    t0 = local_clock()
    eeg.mark("a", t0 + 0.2)  # decidable
    eeg.mark("b", t0 + 0.9)  # its epoch runs into the gap
    eeg.mark("c", t0 + 1.05)  # no EEG at all at its time
    eeg.mark("d", t0 + 2.2)  # after the stream resumed
    _paced(eeg, t0, 1.0)
    time.sleep(1.0)  # the amplifier stalls
    _paced(eeg, t0 + 2.0, 1.0, seed=1)  # ...and resumes, 100 samples later
    time.sleep(0.3)
    eeg.outlet._del()  # the EEG outlet vanishes for good
    thread.join(15)
    eeg.close()
    err = box.get("error")
    assert isinstance(err, StreamLost), (err, said.lines)
    assert str(err) == (f"EEG stream 'st-eeg' vanished and did not come back within 0.8 s; the session ended after "
                        f"2 decision(s), all in {log}.")
    assert [d.marker for d in session.decisions] == ["a", "d"]
    # one line per stall (the mid-stream one, and maybe one before the outlet is found gone), not one per poll
    assert 1 <= len(said.having("stalled: no sample for")) <= 2
    assert said.having("resumed after") and said.having("(100 samples missing)")
    assert said.having("marker 'b' at") and said.having("about 100 samples dropped")
    assert said.having("marker 'c' at") and said.having("the EEG has no sample at the marker time")
    assert said.having("EEG stream 'st-eeg' vanished (its outlet is gone); waiting up to 0.8 s")
    assert session.status.dropped == 100
    (sess,) = read_session_log(log)
    assert [r["marker"] for r in sess["decisions"]] == ["a", "d"]
    assert sess["end"]["reason"] == "lost" and sess["end"]["decisions"] == 2
    assert {"stall", "resumed", "skipped", "lost"} <= {e["event"] for e in sess["events"]}


def test_vanished_stream_that_comes_back_is_reconnected(model, tmp_path):
    ckpt, group, _, _ = model
    from mne_lsl.lsl import local_clock

    eeg = ss.EEGOutlet("rc-eeg", ss.CH_NAMES, marker_name="rc-mk")
    said = ss.Collector()
    session = StreamSession(ckpt, group, eeg=StreamSpec(name="rc-eeg"), markers=StreamSpec(name="rc-mk"),
                            options=OnlineOptions(stall_s=0.3, lost_s=8), log=tmp_path / "rc.jsonl", notify=said,
                            outlet_name="rc-decisions")
    thread, box = ss.run_in_thread(session, max_decisions=2, duration=25)
    ss.wait_running(session)
    t0 = local_clock()
    eeg.mark("before", t0 + 0.2)
    _paced(eeg, t0, 0.6)
    eeg.outlet._del()  # the amplifier app restarts...
    end = time.monotonic() + 10
    while not said.having("vanished") and time.monotonic() < end:
        time.sleep(0.05)
    again = ss.EEGOutlet("rc-eeg", ss.CH_NAMES)  # ...with the same name and source id
    end = time.monotonic() + 10
    while not said.having("is back") and time.monotonic() < end:
        time.sleep(0.05)
    t1 = local_clock()
    eeg.mark("after", t1 + 0.2)
    _paced(again, t1, 0.8)
    thread.join(10)
    again.close()
    eeg.close()
    assert "error" not in box, (box.get("error"), said.lines)
    assert [d.marker for d in box["decisions"]] == ["before", "after"]
    assert said.having("EEG stream 'rc-eeg' is back; decoding continues.")


def test_burst_of_markers_old_and_future_markers(model, tmp_path):
    ckpt, group, _, _ = model
    from mne_lsl.lsl import local_clock

    eeg = ss.EEGOutlet("bu-eeg", ss.CH_NAMES, marker_name="bu-mk")
    said = ss.Collector()
    session = StreamSession(ckpt, group, eeg=StreamSpec(name="bu-eeg"), markers=StreamSpec(name="bu-mk"),
                            options=OnlineOptions(max_pending=16), log=tmp_path / "b.jsonl", notify=said,
                            outlet_name="bu-decisions")
    thread, box = ss.run_in_thread(session, duration=4)
    ss.wait_running(session)
    t0 = local_clock() - 2.1
    eeg.mark("future", local_clock() + 100)  # a marker clock far ahead of the EEG clock
    eeg.markers.push_chunk([[f"b{i}"] for i in range(200)], timestamp=t0 + 0.3 + 0.002 * np.arange(200))
    time.sleep(0.3)
    eeg.push(_noise(200), t0)
    time.sleep(0.3)
    eeg.mark("old", t0 - 20)  # before the first EEG sample held
    thread.join(15)
    eeg.close()
    assert "error" not in box, box.get("error")
    assert [d.marker for d in box["decisions"]] == [f"b{i}" for i in range(184, 200)]
    burst = said.having("burst of")
    assert len(burst) == 1 and "more than --max-pending 16 waited for EEG data, so the" in burst[0]
    assert said.having("marker 'future' is stamped") and said.having("the marker and EEG clocks disagree")
    old = said.having("marker 'old' at")
    assert len(old) == 1 and "its epoch starts before the oldest EEG sample held" in old[0]


def test_wrong_true_rate_and_units_are_named(model, tmp_path):
    """A stream declaring 100 Hz but delivering 90 samples/s, in microvolts for a volt-trained checkpoint."""
    ckpt, group, _, _ = model
    from mne_lsl.lsl import local_clock

    eeg = ss.EEGOutlet("ru-eeg", ss.CH_NAMES, marker_name="ru-mk")
    said = ss.Collector()
    session = StreamSession(ckpt, group, eeg=StreamSpec(name="ru-eeg"), markers=StreamSpec(name="ru-mk"),
                            log=tmp_path / "ru.jsonl", notify=said, outlet_name="ru-decisions")
    thread, box = ss.run_in_thread(session, duration=2.5)
    ss.wait_running(session)
    n = 270
    stamps = local_clock() - 3.1 + np.arange(n) / 90.0
    eeg.outlet.push_chunk(np.ascontiguousarray(_noise(n) * 1e6, dtype=np.float32), timestamp=stamps)
    thread.join(10)
    eeg.close()
    assert "error" not in box, box.get("error")
    assert said.having("EEG stream 'ru-eeg' declares 100 Hz but delivers 90.0 samples/s")
    units = said.having("times the amplitude of the checkpoint's training data: a unit mismatch?")
    assert len(units) == 1 and "pass --scale" in units[0]


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """sa (test mount)."""

    register(app)
    return app


def _bad(args: list[str], expect: str, log: Path) -> None:
    res = CliRunner().invoke(_app(), ["stream", *args, "--log", str(log), "--connect-timeout", "1.5", "--no-display"])
    out = res.output
    assert res.exit_code == 2, out
    assert expect in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert not log.exists()


def test_cli_refuses_bad_streams_and_options_in_one_line(model, tmp_path):
    ckpt, group, _, _ = model
    from mne_lsl.lsl import StreamInfo, StreamOutlet

    base = [str(ckpt), "--gallery", group.key]
    log = tmp_path / "never.jsonl"
    wrong = ss.EEGOutlet("cm-eeg", ss.CH_NAMES[:-1] + ["Cz"], marker_name="cm-mk")
    irregular = StreamOutlet(StreamInfo("irr-eeg", "EEG", 8, 0.0, "float32", "irr"))
    try:
        listing = CliRunner().invoke(_app(), ["stream", "--list"])
        assert listing.exit_code == 0 and "'cm-eeg' (EEG, 8 ch, 100 Hz" in listing.output, listing.output
        _bad(base + ["--eeg", "cm-eeg", "--markers", "cm-mk"], "EEG stream 'cm-eeg': channel(s) PO8 of the checkpoint "
             "are missing", log)
        _bad(base + ["--eeg", "irr-eeg", "--markers", "cm-mk"], "has an irregular sampling rate", log)
        _bad(base + ["--eeg", "cm-eeg", "--trigger", "STI"], "EEG stream 'cm-eeg': channel(s) PO8", log)
        _bad(base + ["--eeg", "nothing-here"], "no EEG LSL stream named 'nothing-here' appeared within 1.5 s", log)
    finally:
        wrong.close()
        irregular._del()
    _bad(base + ["--threshold", "5"], "--threshold 5.0 is a margin between cosine scores", log)
    _bad(base + ["--baseline", "a,b"], "--baseline 'a,b' must be two times in seconds", log)
    _bad(base + ["--baseline", "0,-0.1"], "is empty; give tmin < tmax", log)
    _bad(base + ["--repeat", "0"], "--repeat 0 must be at least 1", log)
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(_app(), ["stream", *base, "--log", str(tmp_path / "afile" / "s.jsonl"), "--no-display"])
    assert res.exit_code == 2 and "is a file, not a folder; choose another place" in res.output, res.output
    _bad(base + ["--only", "(("], "--only '((' is not a regular expression", log)
    _bad(base + ["--markers", "m", "--trigger", "STI"], "give either --markers or --trigger, not both", log)
    _bad([str(tmp_path / "none.safetensors"), "--gallery", group.key], "does not exist; train one", log)
    bad_csv = tmp_path / "cmds.csv"
    bad_csv.write_text("id,command\nthing01,LEFT,extra\n")
    _bad(base + ["--commands", str(bad_csv)], "row 2 has 3 non-empty cell(s)", log)
    bad_csv.write_text("thing01,LEFT\nthing01,RIGHT\n")
    _bad(base + ["--commands", str(bad_csv)], "'thing01' is mapped twice", log)


def test_cli_names_a_missing_trigger_channel(model, tmp_path):
    ckpt, group, _, _ = model
    eeg = ss.EEGOutlet("tr-eeg", ss.CH_NAMES)
    try:
        _bad([str(ckpt), "--gallery", group.key, "--eeg", "tr-eeg", "--trigger", "STI"],
             "EEG stream 'tr-eeg' has no channel 'STI' for --trigger", tmp_path / "l.jsonl")
    finally:
        eeg.close()


def _feed(eeg: ss.EEGOutlet, stop: threading.Event, soa: float = 0.3) -> None:
    """Real-time noise with a marker every `soa` seconds, until stopped."""
    from mne_lsl.lsl import local_clock

    t0, k = local_clock(), 0
    while not stop.is_set():
        eeg.push(_noise(10, k), t0 + k * 0.1)
        if k % 3 == 0:
            eeg.mark(f"m{k}", t0 + k * 0.1)
        k += 1
        time.sleep(max(t0 + k * 0.1 - local_clock(), 0))


def test_cli_session_publishes_logs_and_maps_commands(model, tmp_path):
    ckpt, group, _, _ = model
    eeg = ss.EEGOutlet("cli-eeg", ss.CH_NAMES, marker_name="cli-mk")
    cmds = tmp_path / "commands.csv"
    cmds.write_text("".join(f"thing{i:02d},GO{i}\n" for i in range(24)) + "nothing-like-this,STOP\n")
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(eeg, stop), daemon=True)
    feeder.start()
    log = tmp_path / "cli.jsonl"
    try:
        res = CliRunner().invoke(_app(), ["stream", str(ckpt), "--gallery", group.key, "--eeg", "cli-eeg", "--markers",
                                          "cli-mk", "--commands", str(cmds), "--max-decisions", "3", "--log", str(log),
                                          "--outlet", "cli-decisions", "--command-outlet", "cli-commands", "--display"])
    finally:
        stop.set()
        feeder.join(5)
        eeg.close()
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "1 key(s) of" in res.output and "(nothing-like-this); they will never fire." in res.output
    assert "session ended: 3 decision(s)" in res.output and "epochs" in res.output, res.output
    (sess,) = read_session_log(log)
    assert len(sess["decisions"]) == 3 and sess["end"]["reason"] == "done"
    for r in sess["decisions"]:
        assert r["command"] == "GO" + str(int(r["ids"][0].split("/")[1][:5]) - 1)


@pytest.mark.slow
def test_ctrl_c_ends_the_session_cleanly(model, tmp_path):
    ckpt, group, _, _ = model
    eeg = ss.EEGOutlet("cc-eeg", ss.CH_NAMES, marker_name="cc-mk")
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(eeg, stop), daemon=True)
    feeder.start()
    log = tmp_path / "cc.jsonl"
    script = ("import typer\nfrom sa.decode.stream_cli import register\napp = typer.Typer()\n"
              "@app.callback()\ndef main():\n    pass\nregister(app)\napp()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, "stream", str(ckpt), "--gallery", group.key, "--eeg", "cc-eeg",
                             "--markers", "cc-mk", "--log", str(log), "--outlet", "cc-decisions", "--no-display"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            if log.exists() and '"decision": 2' in log.read_text():
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        stop.set()
        feeder.join(5)
        eeg.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "session ended:" in out
    (sess,) = read_session_log(log)
    assert len(sess["decisions"]) >= 2 and sess["end"]["reason"] == "interrupted"


def test_session_log_of_a_killed_session_keeps_every_decision(tmp_path):
    from sa.decode.online import SessionLog

    log = SessionLog(tmp_path / "k.jsonl", {"time": 0})
    for i in range(1, 4):
        log.write({"decision": i, "marker": f"m{i}", "ids": ["a"], "scores": [0.5]})
    log.fh.write('{"decision": 4, "marker": "m4", "ids": ["')  # the process died mid-line
    log.fh.flush()
    log.fh.close()
    (sess,) = read_session_log(tmp_path / "k.jsonl")
    assert [r["decision"] for r in sess["decisions"]] == [1, 2, 3] and sess["end"] is None
    again = SessionLog(tmp_path / "k.jsonl", {"time": 1})  # the next session appends after the torn line
    again.write({"decision": 1, "marker": "n1", "ids": ["b"], "scores": [0.7]})
    again.close("done")
    first, second = read_session_log(tmp_path / "k.jsonl")
    assert len(first["decisions"]) == 3 and first["end"] is None
    assert [r["marker"] for r in second["decisions"]] == ["n1"] and second["end"]["reason"] == "done"


def test_session_log_says_when_the_background_sync_fails(tmp_path, monkeypatch):
    """A disk that fails fsync (full, or gone): the next record is still written, then raises that OSError (which the
    CLI turns into one sentence); every line stays readable, and close still closes the file."""
    import errno

    import sa.decode.online as online

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(online.os, "fsync", full)
    log = online.SessionLog(tmp_path / "f.jsonl", {"time": 0})
    log._syncer.join(5)  # the start record's sync failed in the background
    assert not log._syncer.is_alive()
    with pytest.raises(OSError) as failed:
        log.write({"decision": 1, "marker": "m1", "ids": ["a"], "scores": [0.5]})
    assert failed.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        log.close("error")
    assert log.fh.closed
    (sess,) = read_session_log(tmp_path / "f.jsonl")
    assert sess["start"]["time"] == 0 and [r["decision"] for r in sess["decisions"]] == [1]
    assert sess["end"]["reason"] == "error"
