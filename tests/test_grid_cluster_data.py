"""Datasets in object storage (``s3://bucket/path/<name>``), against moto's S3 server on loopback: downloaded once
into a cache keyed by content, read exactly as the same directory on disk, downloaded again only when changed."""
import numpy as np
import pytest

from ablate.data import DataError, load, make_synthetic, read_mmrec, remote, write_mmrec
from ablate.grid import GridSpec
from tests.grid_helpers import free_port

pytestmark = pytest.mark.cluster


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    pytest.importorskip("moto", reason="moto[server] (dev extra) is needed for the S3 dataset test")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "ABLATE_DATA_CACHE": str(tmp_path / "cache")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="data")
    try:
        yield client
    finally:
        server.stop()


def upload(client, directory, prefix):
    for path in sorted(directory.iterdir()):
        client.upload_file(str(path), "data", f"{prefix}/{path.name}")


def test_an_s3_dataset_is_downloaded_once_and_read_as_on_disk(bucket, tmp_path, monkeypatch):
    local = write_mmrec(make_synthetic(n_users=60, n_items=40, text_dim=8, image_dim=6, seed=1), tmp_path / "tiny")
    upload(bucket, local, "mmrec/tiny")
    bucket.put_object(Bucket="data", Key="mmrec/tiny/extra/ignored.npy", Body=b"not part of the dataset")
    downloads = []
    make_client = remote._client

    def counting_client():
        client = make_client()
        download = client.download_file

        def counted(bucket_name, key, filename):
            downloads.append(key)
            return download(bucket_name, key, filename)

        client.download_file = counted
        return client

    monkeypatch.setattr(remote, "_client", counting_client)
    first = load("s3://data/mmrec/tiny")
    n_files = len(downloads)
    again = load("s3://data/mmrec/tiny/")
    assert len(downloads) == n_files == len(list(local.iterdir()))  # the second load read the cache only
    expected = read_mmrec(local)
    for data in (first, again):
        assert data.name == "tiny" and (data.n_users, data.n_items) == (expected.n_users, expected.n_items)
        assert np.array_equal(data.users, expected.users) and np.array_equal(data.split, expected.split)
        assert np.array_equal(data.features["text"]["default"], expected.features["text"]["default"])
    # new content, new key: downloaded again, and the new values are read
    changed = expected.features["text"]["default"] + 1.0
    np.save(local / "text_feat.npy", changed)
    upload(bucket, local, "mmrec/tiny")
    third = load("s3://data/mmrec/tiny")
    assert len(downloads) == 2 * n_files
    assert np.array_equal(third.features["text"]["default"], changed)
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2


def test_a_missing_or_malformed_s3_dataset_is_one_clear_error(bucket):
    with pytest.raises(DataError, match=r"s3://data/nothing/here: no <name>\.inter file there"):
        load("s3://data/nothing/here")
    bucket.put_object(Bucket="data", Key="odd/readme.txt", Body=b"x")
    with pytest.raises(DataError, match=r"found readme\.txt"):
        load("s3://data/odd")
    with pytest.raises(DataError, match="no bucket"):
        load("s3://no-such-bucket/x")


def test_a_grid_data_root_in_s3_names_each_dataset_there():
    spec = GridSpec(datasets=["baby"], data_root="s3://bucket/mmrec/")
    assert spec.dataset_source("baby") == "s3://bucket/mmrec/baby"
    assert spec.dataset_source("s3://other/x") == "s3://other/x"
