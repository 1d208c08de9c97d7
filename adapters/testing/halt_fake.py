"""A fake of Halt's registration system as the Halt adapter sees it: CSV drop folders.

It behaves like the real system at the folder boundary, for tests and the demo:

* it keeps a **dossier register** (Halt's dossier number, first names, family name, date of
  birth, BSN when known) and exports it as ``register/dossiers.csv``;
* it exports *voortgang* rows to ``uit/`` the way Halt's export does — UTF-8 with BOM, ``;``,
  CRLF, ``dd-mm-jjjj`` — carefully (``.name.part``, fsync, rename) or carelessly (straight into
  the final name, possibly half-way), and can write deliberately broken files for tests;
* it reads what the adapter wrote into ``in/`` (checking the BOM and the header), can *import*
  (take away) those files, and reads the ``mislukt/`` reports.

Nothing here uses the adapter's own CSV reading or writing code.
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.partners.halt import DEFAULT_SYSTEM_TOML
from adapters.testing._dropfolder import (
    pending,
    reports,
    system_table,
    take_away,
    write_carefully,
)

BOM = "\ufeff"
VOORTGANG_COLUMNS = (
    "halt-dossiernummer",
    "datum",
    "status",
    "onderdeel",
    "toelichting",
    "ontvangers",
)


@dataclass(frozen=True)
class HaltDossier:
    """A dossier in Halt's registration."""

    dossiernummer: str
    voornamen: str
    achternaam: str
    geboortedatum: datetime.date
    bsn: str | None = None


def halt_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """What Halt's export writes: BOM, ``;``, CRLF."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return (BOM + out.getvalue()).encode("utf-8")


@dataclass
class FakeHaltSystem:
    """The Halt side of the drop folders of the partner folder ``root``."""

    root: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    dossiers: dict[str, HaltDossier] = field(default_factory=dict)
    imported: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for folder in (self.uit, self.inbox, self.register_file.parent):
            folder.mkdir(parents=True, exist_ok=True)

    # -- configuration ---------------------------------------------------------------------

    def system_table(self) -> dict[str, Any]:
        return system_table(DEFAULT_SYSTEM_TOML, self.overrides)

    def _folder(self, key: str) -> Path:
        return self.root / str(self.system_table()[key])

    @property
    def uit(self) -> Path:
        return self._folder("uit_dir")

    @property
    def inbox(self) -> Path:
        return self._folder("in_dir")

    @property
    def mislukt(self) -> Path:
        return self._folder("mislukt_dir")

    @property
    def verwerkt(self) -> Path:
        return self._folder("verwerkt_dir")

    @property
    def register_file(self) -> Path:
        return self._folder("register")

    # -- the dossier register --------------------------------------------------------------

    def register(self, *dossiers: HaltDossier) -> None:
        for dossier in dossiers:
            self.dossiers[dossier.dossiernummer] = dossier
        data = halt_csv(
            ("halt-dossiernummer", "voornamen", "achternaam", "geboortedatum", "bsn"),
            [
                (
                    d.dossiernummer,
                    d.voornamen,
                    d.achternaam,
                    d.geboortedatum.strftime("%d-%m-%Y"),
                    d.bsn or "",
                )
                for d in self.dossiers.values()
            ],
        )
        write_carefully(self.register_file.parent, self.register_file.name, data)

    # -- exports ---------------------------------------------------------------------------

    @staticmethod
    def voortgang(
        dossiernummer: str,
        *,
        datum: str = "12-03-2026",
        status: str = "positief afgerond",
        onderdeel: str = "Halt-afdoening",
        toelichting: str = "Excuses aangeboden en de schade vergoed; afdoening afgerond.",
        ontvangers: str = "om",
    ) -> list[str]:
        """One voortgang row in ``VOORTGANG_COLUMNS`` order."""
        return [dossiernummer, datum, status, onderdeel, toelichting, ontvangers]

    def export(
        self,
        name: str,
        rows: Sequence[Sequence[str]],
        *,
        header: Sequence[str] = VOORTGANG_COLUMNS,
    ) -> Path:
        """Export rows to ``uit/name`` carefully."""
        return write_carefully(self.uit, name, halt_csv(header, rows))

    def export_bytes(self, name: str, data: bytes) -> Path:
        """Export raw bytes to ``uit/name`` carefully (for broken files)."""
        return write_carefully(self.uit, name, data)

    def export_careless(self, name: str, data: bytes, *, upto: int | None = None) -> Path:
        """Write straight into ``uit/name``; with ``upto`` only its first ``upto`` bytes."""
        path = self.uit / name
        path.write_bytes(data if upto is None else data[:upto])
        return path

    # -- what the adapter wrote ------------------------------------------------------------

    def received(self) -> dict[str, list[dict[str, str]]]:
        """``in/<name>.csv`` → its rows as dicts; every file must start with the BOM."""
        out: dict[str, list[dict[str, str]]] = {}
        for path in sorted(self.inbox.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(".csv"):
                continue
            text = path.read_bytes().decode("utf-8")
            if not text.startswith(BOM):
                raise ValueError(f"{path.name}: Halt's import needs the UTF-8 BOM")
            reader = csv.DictReader(io.StringIO(text[1:], newline=""), delimiter=";")
            out[path.name] = list(reader)
        return out

    def import_in(self) -> list[str]:
        """Halt's system imports ``in/`` and removes the files (as the real one does)."""
        return take_away(self.inbox, self.received(), self.imported)

    def failed_reports(self) -> dict[str, str]:
        """``mislukt/<name>`` → the text of ``<name>.fout.txt``."""
        return reports(self.mislukt, ".fout.txt")

    def pending(self) -> list[str]:
        return pending(self.uit)
