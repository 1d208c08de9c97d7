"""A fake of the OM's case system as the OM adapter sees it: files in drop folders.

It behaves like the real system at the folder boundary, for tests and the demo:

* it exports its **person register** (``<Personenregister>``) for approach-notice matching;
* it writes outbound documents (``<Verwijzing>``, ``<Voortgang>``) into ``in/`` the careful way
  (``.name.part``, fsync, rename) or, to test the adapter's defences, the careless way (straight
  into the final name, possibly stopping half-way);
* it reads what the adapter wrote into ``out/`` and checks every file against the XSD that
  ships with the adapter, as an OM import would, and can *import* (take away) those files;
* it reads the ``failed/`` reports.

The fake imports the adapter's XSD and namespace (the format's single source of truth) but none
of its reading or writing logic.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from adapters.partners.om import DEFAULT_SYSTEM_TOML, NAMESPACE, load_schema, safe_parser
from adapters.testing._dropfolder import (
    pending,
    reports,
    system_table,
    take_away,
    write_carefully,
)


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _path(expression: str) -> str:
    return "/".join(_q(part) for part in expression.split("/"))


@dataclass(frozen=True)
class OmPerson:
    """A person in the OM registration."""

    persoonsnummer: str
    voornamen: str
    achternaam: str
    geboortedatum: datetime.date
    bsn: str | None = None


@dataclass(frozen=True)
class OmDocument:
    """A file the adapter wrote into ``out/``, parsed and XSD-checked."""

    name: str
    root: etree._Element

    @property
    def kind(self) -> str:
        return etree.QName(self.root).localname

    def value(self, path: str) -> str | None:
        """Text at ``path`` (``"Voortgang/Status"``), ``None`` if absent."""
        found = self.root.find(_path(path))
        return None if found is None else found.text

    def all(self, path: str) -> list[etree._Element]:
        return list(self.root.iterfind(_path(path)))


@dataclass
class FakeOmSystem:
    """The OM side of the drop folders of the partner folder ``root``."""

    root: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    persons: dict[str, OmPerson] = field(default_factory=dict)
    imported: dict[str, bytes] = field(default_factory=dict)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.schema = load_schema()
        for folder in (self.inbox, self.outbox, self.register_file.parent):
            folder.mkdir(parents=True, exist_ok=True)

    # -- configuration ---------------------------------------------------------------------

    def system_table(self) -> dict[str, Any]:
        """The ``[system]`` table the adapter should run with (development layout + overrides)."""
        return system_table(DEFAULT_SYSTEM_TOML, self.overrides)

    def _folder(self, key: str) -> Path:
        return self.root / str(self.system_table()[key])

    @property
    def inbox(self) -> Path:
        return self._folder("in_dir")

    @property
    def outbox(self) -> Path:
        return self._folder("out_dir")

    @property
    def failed(self) -> Path:
        return self._folder("failed_dir")

    @property
    def archive(self) -> Path:
        return self._folder("archive_dir")

    @property
    def register_file(self) -> Path:
        return self._folder("register")

    # -- the person register ---------------------------------------------------------------

    def register(self, *persons: OmPerson) -> None:
        """Add persons and export the register again (atomically, as a careful system does)."""
        for person in persons:
            self.persons[person.persoonsnummer] = person
        root = etree.fromstring(
            f'<Personenregister xmlns="{NAMESPACE}" versie="1"/>'.encode(), safe_parser()
        )
        for person in self.persons.values():
            p = etree.SubElement(root, _q("Persoon"))
            etree.SubElement(p, _q("Persoonsnummer")).text = person.persoonsnummer
            if person.bsn:
                etree.SubElement(p, _q("Bsn")).text = person.bsn
            etree.SubElement(p, _q("Voornamen")).text = person.voornamen
            etree.SubElement(p, _q("Achternaam")).text = person.achternaam
            etree.SubElement(p, _q("Geboortedatum")).text = person.geboortedatum.isoformat()
        data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
        self.schema.assertValid(root)
        write_carefully(self.register_file.parent, self.register_file.name, data)

    # -- outbound documents ----------------------------------------------------------------

    def _kenmerk(self) -> str:
        self._seq += 1
        return f"OM-HRL-2026-{self._seq:06d}"

    def _document(
        self,
        kind: str,
        persoonsnummers: Sequence[str],
        ontvangers: Sequence[str],
        aanpak_id: str | None,
        head: Iterable[tuple[str, str]],
        tail: Iterable[tuple[str, str | None]],
    ) -> bytes:
        root = etree.fromstring(f'<{kind} xmlns="{NAMESPACE}" versie="1"/>'.encode(), safe_parser())
        for name, text in head:
            etree.SubElement(root, _q(name)).text = text
        recipients = etree.SubElement(root, _q("Ontvangers"))
        for partner in ontvangers:
            etree.SubElement(recipients, _q("Ontvanger")).text = partner
        youths = etree.SubElement(root, _q("Jeugdigen"))
        for number in persoonsnummers:
            etree.SubElement(youths, _q("Jeugdige")).set("persoonsnummer", number)
        if aanpak_id is not None:
            etree.SubElement(root, _q("AanpakId")).text = aanpak_id
        for name, value in tail:
            if value is not None:
                etree.SubElement(root, _q(name)).text = value
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

    def verwijzing(
        self,
        persoonsnummers: Sequence[str],
        *,
        ontvangers: Sequence[str] = ("halt",),
        parketnummer: str = "15/123456-26",
        delictcategorie: str = "vernieling",
        pleegdatum: datetime.date = datetime.date(2026, 2, 20),
        verwijsdatum: datetime.date = datetime.date(2026, 3, 2),
        halt_waardig: bool = True,
        toelichting: str = "Vernieling van een bushokje; first offender, bekennend. "
        "Verwezen naar Halt conform de Aanwijzing Halt-afdoening.",
        aanpak_id: str | None = None,
    ) -> bytes:
        """A ``<Verwijzing>`` document (XML bytes)."""
        return self._document(
            "Verwijzing",
            persoonsnummers,
            ontvangers,
            aanpak_id,
            [("Kenmerk", self._kenmerk()), ("Parketnummer", parketnummer)],
            [
                ("Delictcategorie", delictcategorie),
                ("Pleegdatum", pleegdatum.isoformat()),
                ("Verwijsdatum", verwijsdatum.isoformat()),
                ("HaltWaardig", "true" if halt_waardig else "false"),
                ("Toelichting", toelichting),
            ],
        )

    def voortgang(
        self,
        persoonsnummers: Sequence[str],
        *,
        ontvangers: Sequence[str] = ("halt",),
        datum: datetime.date = datetime.date(2026, 3, 20),
        status: str = "afgerond",
        onderdeel: str | None = "Strafzaak",
        toelichting: str = "Zaak geseponeerd na positief afgeronde Halt-afdoening.",
    ) -> bytes:
        return self._document(
            "Voortgang",
            persoonsnummers,
            ontvangers,
            None,
            [("Kenmerk", self._kenmerk())],
            [
                ("Datum", datum.isoformat()),
                ("Status", status),
                ("Onderdeel", onderdeel),
                ("Toelichting", toelichting),
            ],
        )

    def drop(self, name: str, data: bytes) -> Path:
        """Write ``in/name`` the careful way: a dot-named temp file, fsync, rename."""
        return write_carefully(self.inbox, name, data)

    def drop_careless(self, name: str, data: bytes, *, upto: int | None = None) -> Path:
        """Write straight into ``in/name``; with ``upto``, only the first ``upto`` bytes (a
        writer that is still busy, or that crashed half-way)."""
        path = self.inbox / name
        path.write_bytes(data if upto is None else data[:upto])
        return path

    def finish_careless(self, name: str, data: bytes) -> None:
        """The careless writer completes ``in/name``."""
        (self.inbox / name).write_bytes(data)

    # -- inbound documents -----------------------------------------------------------------

    def received(self) -> dict[str, OmDocument]:
        """Every file in ``out/`` (never dot-files), parsed and checked against the XSD."""
        out: dict[str, OmDocument] = {}
        for path in sorted(self.outbox.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(".xml"):
                continue
            root = etree.fromstring(path.read_bytes(), safe_parser())
            self.schema.assertValid(root)
            out[path.name] = OmDocument(path.name, root)
        return out

    def import_out(self) -> list[str]:
        """The OM system imports what is in ``out/`` and removes it (as the real one does)."""
        return take_away(self.outbox, self.received(), self.imported)

    def failed_reports(self) -> dict[str, str]:
        """``failed/<name>`` → the text of ``<name>.error.txt``."""
        return reports(self.failed, ".error.txt")

    def pending(self) -> list[str]:
        """Names still in ``in/`` (not yet taken by the adapter)."""
        return pending(self.inbox)
