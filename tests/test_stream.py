"""Online decoding over LSL on loopback: a recording replayed live by mne-lsl's PlayerLSL is decoded epoch by
epoch, and each decision must equal `sa decode` (sa.decode.offline.decode) on the epochs mne cuts offline."""

from __future__ import annotations

import support_stream as ss  # noqa: I001 - first: points $LSLAPICFG at the loopback config before liblsl loads

import gc
import json
import time

import mne
import numpy as np
import pytest

from sa.decode.lsl import StreamSpec, find_stream
from sa.decode.online import OnlineOptions, StreamSession, read_session_log
from sa.decode.offline import decode


pytestmark = pytest.mark.filterwarnings("ignore:.*End of file reached with an empty chunk")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(checkpoint path, gallery group, forward model, gallery features): trained in-test, saved by sa's save path."""
    return ss.trained_model(tmp_path_factory)


def _player(path, name, **kw):
    from mne_lsl.player import PlayerLSL

    return PlayerLSL(path, chunk_size=5, n_repeat=1, name=name, **kw)


def _subscribe(name: str):
    """A consumer's inlet on one of the session's outlets (recover=True, so it drains what arrived after the end)."""
    from mne_lsl.lsl import StreamInlet

    inlet = StreamInlet(find_stream("consumer", StreamSpec(name=name), 5, "--outlet"), recover=True)
    inlet.open_stream(timeout=5)
    return inlet


def _pull_all(inlet) -> list[str]:
    data, _ = inlet.pull_chunk(timeout=0.0)
    return [row[0] for row in data]


def test_player_replay_decisions_equal_offline_decode(model, tmp_path):
    ckpt, group, fwd, feats = model
    shown = [int(i) for i in np.random.default_rng(5).permutation(len(feats))[:12]]
    ss.make_raw(fwd, feats, shown, lead=4.0).save(tmp_path / "rec_raw.fif", verbose="error")
    raw = mne.io.read_raw_fif(tmp_path / "rec_raw.fif", preload=True, verbose="error")
    epochs = ss.offline_epochs(raw)
    want_ids, want_scores = decode(ckpt, epochs.get_data(), group, top_k=3, ch_names=epochs.ch_names, times=epochs.times)
    commands = tmp_path / "commands.csv"
    commands.write_text("id,command\n# concepts or image ids\nthing03,LEFT\n" + f"{ss.image_ids(24)[7]},RIGHT\n")
    said = ss.Collector()
    # PlayerLSL stamps an annotation with the time of the sample *before* its onset (mne_lsl/player/player_lsl.py,
    # _stream_annotations: start_timestamp is the stamp of the previous chunk's last sample, while push_chunk gives
    # sample `start` start_timestamp + 1/sfreq), so the replayed markers come one sample early: --marker-delay fixes it.
    session = StreamSession(ckpt, group.key, eeg=StreamSpec(name="sim-eeg"), markers=StreamSpec(name="sim-eeg-annotations"),
                            options=OnlineOptions(top_k=3, marker_delay=1 / ss.SFREQ), log=tmp_path / "session.jsonl",
                            commands=commands, notify=said, outlet_name="sim-decisions", command_outlet_name="sim-commands")
    thread, box = ss.run_in_thread(session, max_decisions=len(shown), duration=25)
    player = _player(tmp_path / "rec_raw.fif", "sim-eeg", annotations=True)
    player.start()
    try:
        ss.wait_running(session)
        out, cmd = _subscribe("sim-decisions"), _subscribe("sim-commands")
        published, commanded = [], []
        while thread.is_alive():
            published += _pull_all(out)
            commanded += _pull_all(cmd)
            time.sleep(0.05)
        time.sleep(0.2)
        published += _pull_all(out)
        commanded += _pull_all(cmd)
    finally:
        player.stop() if player.running else None
    assert "error" not in box, (box.get("error"), said.lines)
    got = box["decisions"]
    assert len(got) == len(shown), said.lines
    # every epoch decided, the same top-k ids and scores as the offline decode of mne's epochs
    np.testing.assert_array_equal(np.array([d.ids for d in got]), want_ids)
    np.testing.assert_allclose(np.array([d.scores for d in got]), want_scores, atol=1e-5)
    assert [d.marker for d in got] == [f"img{i}" for i in shown]
    # the simulated EEG is driven by the shown images: the decoder is right
    assert np.mean([d.ids[0] == ss.image_ids(24)[i] for d, i in zip(got, shown)]) >= 0.9
    # published on the outlet as JSON, logged line by line, commands on their own outlet
    records = [json.loads(p) for p in published]
    assert [r["ids"] for r in records] == [d.ids for d in got]
    assert [r["scores"] for r in records] == [d.scores for d in got]
    (sess,) = read_session_log(tmp_path / "session.jsonl")
    assert [r["ids"] for r in sess["decisions"]] == [d.ids for d in got] and sess["end"]["reason"] == "done"
    want_cmd = [{"thing03": "LEFT", "thing07": "RIGHT"}.get(d.ids[0].split("/")[1][6:]) for d in got]
    assert commanded == [c for c in want_cmd if c] and len(commanded) >= 1
    assert [d.command for d in got] == want_cmd
    assert all(0 <= d.latency_ms < 1000 for d in got)
    # the session handed the garbage collector back as it found it (frozen and paused only while it ran)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_trigger_channel_resampled_stream_with_baseline(model, tmp_path):
    """A 200 Hz stream with a trigger channel: epochs resampled to the checkpoint's 100 Hz and baseline-corrected
    agree with mne's resample + Epochs(baseline=...) + `sa decode`."""
    ckpt, group, fwd, feats = model
    shown = list(range(0, 20, 2))
    raw200 = ss.make_raw(fwd, feats, shown, sfreq=200.0, trigger=True, lead=4.0)
    raw200.save(tmp_path / "rec200_raw.fif", verbose="error")
    raw200 = mne.io.read_raw_fif(tmp_path / "rec200_raw.fif", preload=True, verbose="error")
    events = mne.find_events(raw200, stim_channel="STI", verbose="error")
    assert (events[:, 0] % 2 == 0).all()
    events[:, 0] //= 2
    raw100 = raw200.copy().resample(100.0, verbose="error")
    base = (-0.05, 0.0)
    ep = mne.Epochs(raw100, events, tmin=ss.TIMES[0], tmax=ss.TIMES[-1], baseline=base, preload=True, picks="all",
                    verbose="error")
    want_ids, want_scores = decode(ckpt, ep.get_data(), group, top_k=5, ch_names=ep.ch_names, times=ep.times)
    said = ss.Collector()
    session = StreamSession(ckpt, group, eeg=StreamSpec(name="sim-eeg200"), trigger="STI",
                            options=OnlineOptions(top_k=5, baseline=base), log=tmp_path / "s.jsonl", notify=said,
                            outlet_name="sim-decisions-200")
    thread, box = ss.run_in_thread(session, max_decisions=len(shown), duration=25)
    player = _player(tmp_path / "rec200_raw.fif", "sim-eeg200", annotations=False)
    player.start()
    thread.join(30)
    player.stop() if player.running else None
    assert "error" not in box, box.get("error")
    got = box["decisions"]
    assert said.having("runs at 200 Hz and the checkpoint at 100 Hz: each epoch is resampled")
    assert [d.marker for d in got] == [str(i + 1) for i in shown]
    np.testing.assert_array_equal([d.ids[0] for d in got], want_ids[:, 0])
    np.testing.assert_allclose(np.array([d.scores for d in got]), want_scores, atol=0.02)
    assert np.mean([d.ids[0] == ss.image_ids(24)[i] for d, i in zip(got, shown)]) >= 0.9


def _replay_fast(raw, outlet: ss.EEGOutlet, delay: float = 0.0) -> None:
    """Push a whole recording at once, stamped as if it had just been recorded, with its annotations as markers."""
    from mne_lsl.lsl import local_clock

    data = raw.get_data(picks=outlet.ch_names).T
    t0 = local_clock() - raw.times[-1] - 0.01
    for a in raw.annotations:
        outlet.mark(a["description"], t0 + a["onset"] + delay)
    outlet.push(data, t0)


def test_repeat_and_threshold_match_offline_averages(model, tmp_path):
    """--repeat 3 averages the epochs of one label before deciding; --threshold decides earlier when the margin
    is reached: both equal `sa decode` on the averages of the same offline epochs."""
    ckpt, group, fwd, feats = model
    shown = [i for _ in range(3) for i in (1, 4, 9, 13, 17, 22)]
    raw = ss.make_raw(fwd, feats, shown, soa=0.32, noise=1.5, extra=False)
    offline = ss.offline_epochs(raw).get_data(picks=ss.CH_NAMES)
    labels = [f"img{i}" for i in shown]

    def expected(threshold: float | None) -> list[tuple]:
        out, pile = [], {}
        for x, lab in zip(offline, labels):
            pile.setdefault(lab, []).append(x)
            ids, sc = decode(ckpt, np.mean(pile[lab], axis=0), group, top_k=3, ch_names=ss.CH_NAMES)
            n = len(pile[lab])
            if n >= 3 or (threshold is not None and sc[0, 0] - sc[0, 1] >= threshold):
                out.append((lab, n, list(ids[0]), sc[0]))
                pile[lab] = []
        return out

    for k, threshold in enumerate((None, 0.12)):
        want = expected(threshold)
        if threshold is not None:  # the threshold must split the labels into early and full decisions
            assert 0 < sum(n < 3 for _, n, _, _ in want) < len(want)
        eeg = ss.EEGOutlet(f"rep-eeg{k}", ss.CH_NAMES, marker_name=f"rep-mk{k}")
        session = StreamSession(ckpt, group, eeg=StreamSpec(name=f"rep-eeg{k}"), markers=StreamSpec(name=f"rep-mk{k}"),
                                options=OnlineOptions(top_k=3, repeat=3, threshold=threshold),
                                log=tmp_path / f"r{k}.jsonl", notify=ss.Collector())
        thread, box = ss.run_in_thread(session, max_decisions=len(want), duration=20)
        ss.wait_running(session)
        _replay_fast(raw, eeg)
        thread.join(25)
        eeg.close()
        assert "error" not in box, box.get("error")
        got = box["decisions"]
        assert [(d.marker, d.n_epochs) for d in got] == [(lab, n) for lab, n, _, _ in want]
        assert [d.ids for d in got] == [ids for _, _, ids, _ in want]
        np.testing.assert_allclose([d.scores for d in got], [sc for _, _, _, sc in want], atol=1e-5)
        assert all(d.early == (d.n_epochs < 3) for d in got)


def test_scores_accumulation_averages_the_evidence(model, tmp_path):
    """--accumulate scores averages each epoch's gallery scores (the running evidence) instead of the trials."""
    ckpt, group, fwd, feats = model
    shown = [2, 5, 2, 5]
    raw = ss.make_raw(fwd, feats, shown, soa=0.32, noise=1.0, extra=False)
    offline = ss.offline_epochs(raw).get_data(picks=ss.CH_NAMES)
    eeg = ss.EEGOutlet("acc-eeg", ss.CH_NAMES, marker_name="acc-mk")
    session = StreamSession(ckpt, group, eeg=StreamSpec(name="acc-eeg"), markers=StreamSpec(name="acc-mk"),
                            options=OnlineOptions(top_k=24, repeat=2, accumulate="scores"), log=tmp_path / "a.jsonl",
                            notify=ss.Collector())
    thread, box = ss.run_in_thread(session, max_decisions=2, duration=20)
    ss.wait_running(session)
    _replay_fast(raw, eeg)
    thread.join(25)
    eeg.close()
    got = box["decisions"]
    ids, sc = decode(ckpt, offline, group, top_k=24, ch_names=ss.CH_NAMES)
    for d, (a, b) in zip(got, [(0, 2), (1, 3)]):
        per_id = {i: s for i, s in zip(ids[a], sc[a])}
        other = {i: s for i, s in zip(ids[b], sc[b])}
        mean = {i: (per_id[i] + other[i]) / 2 for i in per_id}
        best = sorted(mean, key=lambda i: -mean[i])[:24]
        assert d.ids[:5] == best[:5]
        np.testing.assert_allclose(d.scores, [mean[i] for i in d.ids], atol=1e-5)


@pytest.mark.parametrize("encoder", ["eegproject", "linear"])
def test_first_layer_run_by_columns_equals_the_whole_encoder(encoder, tmp_path):
    """The progressive path (first Linear summed chunk by chunk on raw samples, z-score folded into the weights,
    baseline removed at the end) gives the scores of `prepare` + the whole encoder on the finished epoch."""
    from dataclasses import asdict

    from sa.decode.online import OnlineDecoder
    from sa.train.checkpoint import Checkpoint
    from sa.train.trainer import RunSpec, TrainConfig, plain_model

    group = ss.make_gallery(tmp_path / "cache")
    rng = np.random.default_rng(0)
    cfg = TrainConfig(encoder=encoder, embed_dim=32)
    model = plain_model(RunSpec("09", 0, encoder), cfg, (8, 31), 16)
    model.eval()
    ckpt = Checkpoint(model=model, config={**asdict(cfg), "ks": list(cfg.ks)}, encoder=encoder, n_channels=8, n_times=31,
                      feat_dim=16, ch_names=list(ss.CH_NAMES), times=list(ss.TIMES), sfreq=ss.SFREQ, window=None,
                      average_reps=True, zscore_mean=rng.normal(0, 1e-6, 8).astype(np.float32),
                      zscore_std=rng.uniform(1e-6, 3e-6, 8).astype(np.float32), cache_key=group.key,
                      cache_root=str(tmp_path / "cache"), pool="gap", layer="09", seed=0)
    dec = OnlineDecoder(ckpt, group)
    raw = 2e-6 * rng.standard_normal((8, 31)) + 5e-6
    mu = raw[:, :6].mean(axis=1)
    h = sum(dec.first.columns(raw[:, a:b].T, a) for a, b in [(0, 7), (7, 20), (20, 31)])
    h = h + dec.first.bias - dec.first.rowsum @ mu
    want = dec.scores(dec.prepare(raw - mu[:, None]))[0]
    np.testing.assert_allclose(dec.finish(h), want, atol=1e-5)
    assert np.ptp(want) > 0.1  # not a degenerate comparison
