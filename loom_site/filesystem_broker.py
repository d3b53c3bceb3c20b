"""The embedded mode's broker: kombu's filesystem transport, made safe against crashes and its own race.

kombu writes a message by creating its file in the queue folder and then writing into it, and a worker takes
a message by moving the file away and reading it. A worker that lists the folder between the two reads an
empty file, and a process killed in the middle of a write leaves a truncated one; either way the JSON does
not parse, Celery calls the error unrecoverable and the worker exits (the embedded end-to-end test caught
it). Here a message is written under a name no reader takes (``.<name>.part``) and renamed into place once
complete, so a reader sees a whole message or none; and a message that still cannot be read (written by an
older release, damaged on disk) is logged and skipped instead of ending the worker. The message it held is
sent again by the janitor's lost-message pass, as for any message a broker lost.

``loom_site.celery`` registers this as the ``filesystem`` transport, so ``LOOM_BROKER_URL=filesystem://``
means this one everywhere in the project.
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)

PART = ".part"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Write the message beside its final name, then rename it in: a rename is atomic within a folder."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".{name}{PART}")  # "".partition(".")[2] never matches
        try:
            with open(temporary, "wb") as output:
                output.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as error:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from error

    def _get(self, queue: str) -> Any:
        """The next message of ``queue``; an unreadable one is logged and skipped (see the module docstring)."""
        while True:
            try:
                return super()._get(queue)
            except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
                logger.warning("unreadable message skipped", extra={"queue": queue, "error": str(error)})


class Transport(filesystem.Transport):
    Channel = Channel
