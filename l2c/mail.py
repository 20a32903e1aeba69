"""Outgoing e-mail through an outbox: written once under a natural key, delivered once over SMTP.

A retried activity finds the outbox row and does not send again once it is marked sent. The
remaining window (the SMTP server accepted the message, then the process died before the row was
marked) can deliver twice; the Message-ID is derived from the key so mail clients collapse it.
"""

import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage

from sqlalchemy import Engine
from sqlmodel import Session

from models.ledger import OutboxEmail


class Mailer:
    def __init__(self, engine: Engine, smtp_host: str | None, smtp_port: int, mail_from: str):
        self._engine = engine
        self._smtp_host = smtp_host
        self._smtp_port = smtp_port
        self._mail_from = mail_from

    def send_once(self, *, key: str, deal_id: str, recipient: str, subject: str, body: str) -> bool:
        """Queue the e-mail under `key` and deliver it; True once it has been delivered."""
        with Session(self._engine) as session:
            row = session.get(OutboxEmail, key)
            if row is None:
                row = OutboxEmail(
                    key=key,
                    deal_id=deal_id,
                    recipient=recipient,
                    subject=subject,
                    body=body,
                    message_id=f"<{key.replace(':', '.')}@lead-to-cash>",
                    created_at=datetime.now(UTC),
                )
                session.add(row)
                session.commit()
                session.refresh(row)
            if row.sent_at is not None:
                return True
            if self._smtp_host is None:
                return False  # kept in the outbox until a mail server is configured
            message = EmailMessage()
            message["From"] = self._mail_from
            message["To"] = row.recipient
            message["Subject"] = row.subject
            message["Message-ID"] = row.message_id
            message.set_content(row.body)
            with smtplib.SMTP(self._smtp_host, self._smtp_port, timeout=20) as smtp:
                smtp.send_message(message)
            row.sent_at = datetime.now(UTC)
            session.add(row)
            session.commit()
            return True
