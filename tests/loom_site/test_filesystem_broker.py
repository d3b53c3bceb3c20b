"""The embedded mode's broker (``loom_site/filesystem_broker.py``) through a real kombu connection on a folder:
a message is whole or absent, and a damaged message file is skipped, not fatal to the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection, Queue

import loom_site.celery  # noqa: F401  (registers the transport, as every Loom process does)
from loom_site.filesystem_broker import Transport


@pytest.fixture
def broker(tmp_path: Path) -> Connection:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    with Connection("filesystem://", transport_options=options) as connection:
        yield connection


def test_filesystem_urls_get_loom_s_transport(broker):
    assert broker.transport_cls == "filesystem" and isinstance(broker.transport, Transport)


def test_a_damaged_message_file_is_skipped_and_the_next_one_delivered(broker, tmp_path):
    queue = Queue("work", routing_key="work")
    with broker.Producer() as producer:
        producer.publish({"n": 1}, routing_key="work", declare=[queue])
    folder = tmp_path / "queue"
    # What a writer killed mid-write leaves. The folder is read in lexical order and a real name starts with
    # the monotonic clock in milliseconds, never with "0", so these sort before the good message on any machine
    # ("1_..." did not: "12..." sorts before "1_..." once the clock's first digit is 1).
    (folder / "0_truncated.work.msg").write_text('{"body": "eyJu')
    (folder / "0_x_empty.work.msg").write_text("")
    with broker.SimpleQueue(queue) as simple:
        message = simple.get(timeout=2)
        assert message.payload == {"n": 1}
        message.ack()
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.2)
    assert sorted(path.name for path in folder.iterdir()) == []


def test_a_message_being_written_is_neither_counted_nor_taken(broker, tmp_path):
    queue = Queue("work", routing_key="work")
    folder = tmp_path / "queue"
    (folder / ".3_uuid.work.msg.part").write_text('{"half": ')  # a publish in progress, or one that died
    channel = broker.default_channel
    assert queue(channel).queue_declare()[1] == 0
    with broker.Producer() as producer:
        producer.publish({"n": 2}, routing_key="work", declare=[queue])
    published = [path.name for path in folder.iterdir() if not path.name.startswith(".")]
    assert len(published) == 1 and published[0].endswith(".work.msg")
    assert not [path for path in folder.iterdir() if path.name.endswith(".part") and "3_uuid" not in path.name]
    with broker.SimpleQueue(queue) as simple:
        assert simple.get(timeout=2).payload == {"n": 2}
