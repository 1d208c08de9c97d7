"""The welfare organisation's case system, as far as Ketenpost sees it: its SQL database.

A fake for tests and the demo (never used by the adapter). It does what the real case system
and its DBA do: create the Ketenpost tables (the DDL of ``adapters.partners.welfare``),
register clients, write outbox rows when a social worker records progress or a case-conference
contribution, and read the inbox rows and the feedback the adapter writes back. Its statements
are its own, not the adapter's, so a bug in one is not hidden by the same bug in the other.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.partners.welfare import (
    PostgresWelfareDatabase,
    SqliteWelfareDatabase,
    WelfareDatabase,
    create_tables,
)


@dataclass(frozen=True)
class OutboxRow:
    """A ``ketenpost_uitgaand`` row as the case system reads it back."""

    id: int
    soort: str
    client_nummer: str | None
    ontvanger: str
    inhoud: str
    status: str
    reden_code: str | None
    reden: str | None


@dataclass(frozen=True)
class InboxRow:
    """A ``ketenpost_inkomend`` row as the case system reads it."""

    message_id: str
    afzender: str
    soort: str
    aanpak_id: str
    client_nummers: tuple[str, ...]
    inhoud: dict[str, Any]
    opmerking: str | None
    status: str


def _json(value: Any) -> Any:
    # SQLite returns the JSON text, PostgreSQL's jsonb the decoded text too (asyncpg's default
    # codec): both are text here.
    return json.loads(value) if isinstance(value, str) else value


class WelfareCaseSystem:
    """The case system on its database (SQLite file or PostgreSQL schema)."""

    def __init__(self, database: WelfareDatabase) -> None:
        self.database = database

    @classmethod
    def sqlite(cls, path: Path) -> WelfareCaseSystem:
        return cls(SqliteWelfareDatabase(path, create=True))

    @classmethod
    def postgres(cls, url: str, schema: str | None = None) -> WelfareCaseSystem:
        return cls(PostgresWelfareDatabase(url, schema=schema, application_name="welzijn-fake"))

    async def create_tables(self) -> None:
        await create_tables(self.database)

    async def close(self) -> None:
        await self.database.close()

    async def register_client(
        self,
        client_nummer: str,
        voornaam: str,
        achternaam: str,
        geboortedatum: datetime.date,
        tussenvoegsel: str | None = None,
    ) -> None:
        await self.database.execute(
            "INSERT INTO ketenpost_client (client_nummer, voornaam, tussenvoegsel, achternaam, "
            "geboortedatum) VALUES (?, ?, ?, ?, ?)",
            client_nummer,
            voornaam,
            tussenvoegsel,
            achternaam,
            geboortedatum,
        )

    async def write_outbox(
        self,
        soort: str,
        client_nummer: str | None,
        ontvanger: str,
        inhoud: Mapping[str, Any] | str,
    ) -> int:
        """Insert an outbox row as the case system does; its id."""
        text = inhoud if isinstance(inhoud, str) else json.dumps(inhoud, ensure_ascii=False)
        rows = await self.database.fetch(
            "INSERT INTO ketenpost_uitgaand (soort, client_nummer, ontvanger, inhoud) "
            "VALUES (?, ?, ?, ?) RETURNING id",
            soort,
            client_nummer,
            ontvanger,
            text,
        )
        return int(rows[0]["id"])

    async def record_progress(
        self,
        client_nummer: str,
        ontvanger: str,
        *,
        status: str = "volgens-plan",
        samenvatting: str = "Jongere komt wekelijks naar het jongerenwerk; afspraken nagekomen.",
        datum: str = "2026-03-09",
    ) -> int:
        """A social worker records progress for the coordinator."""
        return await self.write_outbox(
            "voortgang",
            client_nummer,
            ontvanger,
            {"status": status, "samenvatting": samenvatting, "datum": datum},
        )

    async def outbox_row(self, row_id: int) -> OutboxRow:
        rows = await self.database.fetch(
            "SELECT id, soort, client_nummer, ontvanger, inhoud, status, reden_code, reden "
            "FROM ketenpost_uitgaand WHERE id = ?",
            row_id,
        )
        return OutboxRow(**rows[0])

    async def set_status(self, row_id: int, status: str) -> None:
        """Put a row back into a status (as a lost acknowledgement would leave it)."""
        await self.database.execute(
            "UPDATE ketenpost_uitgaand SET status = ? WHERE id = ?", status, row_id
        )

    async def inbox(self, soort: str | None = None) -> list[InboxRow]:
        rows = await self.database.fetch(
            "SELECT message_id, afzender, soort, aanpak_id, client_nummers, inhoud, opmerking, "
            "status FROM ketenpost_inkomend ORDER BY id"
        )
        out = [
            InboxRow(
                message_id=r["message_id"],
                afzender=r["afzender"],
                soort=r["soort"],
                aanpak_id=r["aanpak_id"],
                client_nummers=tuple(_json(r["client_nummers"])),
                inhoud=_json(r["inhoud"]),
                opmerking=r["opmerking"],
                status=r["status"],
            )
            for r in rows
        ]
        return [r for r in out if soort is None or r.soort == soort]
