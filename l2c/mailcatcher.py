"""A local SMTP server for `l2c dev` and the tests: every message received is saved as an .eml file."""

from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _SaveToFolder:
    def __init__(self, folder: Path):
        self.folder = folder
        self.messages: list[Message] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        content = (
            envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        )
        message = message_from_bytes(content)
        self.messages.append(message)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{len(list(self.folder.glob('*.eml'))) + 1:05d}.eml").write_bytes(content)
        return "250 Message accepted"


class MailCatcher:
    def __init__(self, folder: Path, port: int = 8025):
        self._handler = _SaveToFolder(folder)
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=port)
        self.port = port

    @property
    def messages(self) -> list[Message]:
        return self._handler.messages

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
