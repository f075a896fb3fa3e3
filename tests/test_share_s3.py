"""Sharing through object storage: push to / pull from a real S3 API (moto in server mode on loopback) with s3fs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from support_share import ISET, bkey, free_port, full_data, make_group
from typer.testing import CliRunner

from sa.cache import open_root
from sa.cache.index import read_index
from sa.cache.share import pull, push
from sa.cli import app
from sa.errors import SAError

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

KEY = f"{ISET}/{bkey(0)}"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (free port) for this module."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; returns (s3:// URL of a cache root in it, storage options reaching the server)."""
    import boto3

    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    name = f"lab-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}/features", {"client_kwargs": {"endpoint_url": s3_endpoint}, "anon": False}


@pytest.fixture
def local(tmp_path):
    """A local cache with one complete group."""
    root = open_root(tmp_path / "mine")
    make_group(root, 0)
    return root


def test_push_to_s3_then_pull_back_gives_equal_digests(local, bucket, tmp_path):
    url, opts = bucket
    s3 = open_root(url, storage_options=opts)
    report = push(bkey(0), s3, root=local, progress=False)
    assert report.copied == report.files and s3.status(KEY) == "complete"
    assert [i.key for i in s3.list()] == [KEY] and list(read_index(s3)) == [KEY]
    assert s3.verify(KEY, progress=False) == []
    back = open_root(tmp_path / "back")
    pull(bkey(0), s3, root=back, progress=False)
    assert back.open(KEY).manifest["arrays"] == local.open(KEY).manifest["arrays"]
    assert back.verify(KEY, progress=False) == []
    np.testing.assert_array_equal(back.open(KEY).read("cls/01"), full_data()["cls/01"])
    np.testing.assert_array_equal(s3.open(KEY).read("mean/00", slice(10, 250)), full_data()["mean/00"][10:250])


class Interrupt(Exception):
    pass


def test_interrupted_push_to_s3_resumes_and_is_never_complete_before_the_end(local, bucket):
    url, opts = bucket
    s3 = open_root(url, storage_options=opts)
    reader = open_root(url, read_only=True, storage_options=opts)
    states = []

    def stop_after_10(rel: str) -> None:
        states.append((reader.status(KEY), KEY in (read_index(reader) or {})))
        if len(states) == 10:
            raise Interrupt

    with pytest.raises(Interrupt):
        push(bkey(0), s3, root=local, progress=False, on_file=stop_after_10)
    assert set(states) == {("partial", False)}
    with pytest.raises(SAError, match="still being copied"):
        reader.open(KEY)
    seen = []
    report = push(bkey(0), s3, root=local, progress=False, on_file=lambda rel: seen.append(reader.status(KEY)))
    assert set(seen) == {"partial"} and report.skipped >= 4 and report.copied < report.files
    assert reader.status(KEY) == "complete" and reader.verify(KEY, progress=False) == []
    assert not s3.loc.fs.exists(f"{s3.loc.path(KEY)}/writer.lock")


def test_cli_push_ls_verify_pull_with_the_endpoint_from_the_environment(local, bucket, tmp_path, monkeypatch, s3_endpoint):
    url, _ = bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("COLUMNS", "200")
    run = CliRunner().invoke
    res = run(app, ["cache", "push", bkey(0), url, "--cache", local.url])
    assert res.exit_code == 0 and "digests verified" in res.output, res.output
    res = run(app, ["cache", "ls", url])
    assert res.exit_code == 0 and bkey(0) in res.output, res.output
    res = run(app, ["cache", "verify", "--cache", url])
    assert res.exit_code == 0 and "ok" in res.output, res.output
    res = run(app, ["cache", "pull", KEY, url, "--cache", str(tmp_path / "back")])
    assert res.exit_code == 0 and "Pulled" in res.output, res.output
