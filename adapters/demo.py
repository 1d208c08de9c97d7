"""``ketenpost demo``: the IJmond covenant's scenario, end to end, on one machine.

In a fresh folder the demo makes a development deployment (``ketenpost init``, handed in as a
callable by the composition root), migrates the gateway's SQLite store and starts the gateway
as a ``ketenpost serve`` **subprocess** (adapters never import the relay service). It starts
every partner system's fake (``adapters.testing``) and every partner's adapter in this process
(``Adapter.run`` as asyncio tasks), then plays the scenario and prints a timeline, one line per
step: time offset, who → whom, what, and the outcome the step checked.

Rules kept here:

* **Every step checks its outcome** in the partner systems themselves — the file that appeared
  in a drop folder, the informatieobject on the zaak, the refusal reason the partner system was
  told, the delivery receipts that came back to the sender as sender events — and waits for it
  with a deadline (``step_timeout_s``), never by sleeping a fixed time. The first step that
  does not behave stops the scenario; ``--once`` then exits non-zero naming it.
* Everything binds to 127.0.0.1. The fakes and the police endpoint take free ports (port 0);
  the demo writes the ports they got into the ``[system]`` tables of its own deployment, so
  ``ketenpost adapter run`` works on that folder afterwards. The gateway's two ports are taken
  free just before ``serve`` binds them.
* The fakes run with the demo's timing: no settle time for drop folders (the fakes write by
  rename, so no file is ever half-written) and no poll interval beyond the SDK's pull loop.
* Each municipality has its own fake zaaksysteem, as each has its own in reality; the four
  share the development client credentials ``ketenpost init`` wrote.
* A fault for tests (``KETENPOST_DEMO_FAULT=stop:PARTNER@STEP``) stops that partner's fake
  system just before that step: a real outage, which the step must then fail to get past.
* **A sandbox** (``--without PARTNER[,…]``) is the same set-up with those partners left out:
  no fake and no adapter for them, and no scenario (every step involves every partner's
  system). Every other partner's system is made exactly as for the scenario (the welfare
  tables too), and their adapters run. The demo prints the gateway and metrics URLs and, per
  partner left out, its folder, its adapter.toml (``[system]`` as ``init`` wrote it) and the
  ``ketenpost adapter run`` command with a ``--metrics-listen`` port of its own, then serves
  until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TextIO, TypeVar

import aiohttp

from adapters.base import SystemClock
from adapters.cli_partner import CliError, PartnerFolder, send
from adapters.client import RefusedError
from adapters.config import ADAPTER_TOML, load_partner_dir
from adapters.engine import Adapter, EngineSettings
from adapters.errors import AdapterError
from adapters.partners.police import PoliceSource
from adapters.registry import default_registry
from adapters.testing.cjg_fake import FakeCjgSystem
from adapters.testing.halt_fake import FakeHaltSystem, HaltDossier
from adapters.testing.om_fake import FakeOmSystem, OmPerson
from adapters.testing.police_fake import FakePoliceSystem, incident, post_incident
from adapters.testing.welfare_fake import WelfareCaseSystem
from adapters.testing.zgw_fake import FakeZgw
from gateway.protocol.messages import Progress, ProgressStatus, encode_body
from gateway.protocol.types import new_pseudonym
from keys.deployment import DeploymentLayout

logger = logging.getLogger("adapters.demo")

FAULT_ENV: Final = "KETENPOST_DEMO_FAULT"
DEFAULT_STEP_TIMEOUT_S: Final = 30.0
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.05
# The SDK's loops at demo speed: a message moves within a fraction of a second.
ENGINE: Final = EngineSettings(poll_wait_s=2.0, pull_interval_s=0.2, backoff_base_s=1)

VELSEN: Final = "gemeente-velsen"
POLICE: Final = "politie-ijmond"
OM: Final = "om"
HALT: Final = "halt"
CJG: Final = "cjg"
WELFARE: Final = "welzijn-ijmond"
PARTICIPANTS: Final = (POLICE, OM, HALT, CJG, WELFARE)
MUNICIPALITIES: Final = (
    "gemeente-heemskerk",
    "gemeente-beverwijk",
    "gemeente-uitgeest",
    VELSEN,
)
ZGW_CLIENT_ID: Final = "ketenpost"
RSIN: Final = "999990007"
ZAAK_ID: Final = "ZAAK-VLS-2026-0042"

# The youth of the approach, and each partner's own number for him.
YOUTH_GIVEN: Final = "Sem"
YOUTH_PREFIX: Final = "de"
YOUTH_FAMILY: Final = "Vries"
YOUTH_BORN: Final = datetime.date(2010, 4, 1)
YOUTH_BSN: Final = "111222333"
LOCAL_IDS: Final = {
    POLICE: "PN-1004711",
    OM: "20260417",
    HALT: "HLT-2026-0042",
    CJG: "C-2026-00017",
    WELFARE: "C-1001",
}
# Another youth, known to the police, for whom no approach was started.
OTHER_PN: Final = "PN-1009932"
WITNESS_PN: Final = "PN-2000001"
# The police incident of step 2.
INCIDENT: Final = "PL1200-2026-0412345"

T = TypeVar("T")


class InitDeployment(Protocol):
    """``ketenpost.init_deployment``: the composition root hands it in."""

    def __call__(self, target: Path, *, now: int, gateway_url: str = "") -> DeploymentLayout: ...


class DemoError(AdapterError):
    """The demo could not set up (gateway, fakes, adapters)."""


class StepFailedError(AdapterError):
    """A step did not behave as expected."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"step {step!r} failed: {detail}")
        self.step = step
        self.detail = detail


@dataclass(frozen=True)
class Fault:
    """Stop ``partner``'s fake system just before step ``before`` (for tests)."""

    partner: str
    before: str

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``stop:PARTNER@STEP``; ``ValueError`` naming the expected form."""
        match = re.fullmatch(r"stop:([a-z][a-z0-9-]+)@([a-z-]+)", text.strip())
        if match is None:
            raise ValueError(f"{FAULT_ENV}: {text!r} is not stop:PARTNER@STEP")
        fault = cls(match.group(1), match.group(2))
        if fault.partner not in (*MUNICIPALITIES, POLICE, CJG):
            raise ValueError(f"{FAULT_ENV}: {fault.partner!r} has no fake system that can stop")
        if fault.before not in STEP_KEYS:
            raise ValueError(f"{FAULT_ENV}: no step {fault.before!r} ({', '.join(STEP_KEYS)})")
        return fault


@dataclass(frozen=True)
class DemoOptions:
    """What ``ketenpost demo`` was asked; times in seconds."""

    folder: Path | None = None
    once: bool = False
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    fault: Fault | None = None
    # Partners left out (a sandbox): no fake, no adapter, no scenario.
    without: frozenset[str] = frozenset()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the gateway binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ketenpost_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ketenpost", *args]


# -- the timeline ------------------------------------------------------------------------------


class Timeline:
    """One line per step on ``out``: offset, who → whom, what, outcome."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._start = time.monotonic()

    def offset(self) -> str:
        return f"+{time.monotonic() - self._start:6.2f}s"

    def note(self, text: str) -> None:
        print(f"{self.offset()}  {text}", file=self._out, flush=True)

    def step(self, number: int, who: str, whom: str, what: str, outcome: str) -> None:
        print(
            f"{self.offset()}  [{number:2d}] {who} → {whom}: {what}\n{'':13}✓ {outcome}",
            file=self._out,
            flush=True,
        )

    def detail(self, lines: Sequence[str]) -> None:
        for line in lines:
            print(f"{'':15}{line}", file=self._out, flush=True)

    def failed(self, number: int, name: str, detail: str) -> None:
        print(
            f"{self.offset()}  [{number:2d}] {name}\n{'':13}✗ {detail}", file=self._out, flush=True
        )


async def until(
    what: str, check: Callable[[], Awaitable[T | None]], timeout_s: float, step: str
) -> T:
    """Poll ``check`` until it returns something other than ``None``; ``StepFailedError``
    naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise StepFailedError(step, f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(POLL_S)


# -- the gateway subprocess --------------------------------------------------------------------


@dataclass
class Gateway:
    """``ketenpost serve`` on SQLite, as a subprocess."""

    root: Path
    port: int
    metrics_port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def operator_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def store_url(self) -> str:
        return f"sqlite://{(self.root / 'gateway-store.db').resolve()}"

    @property
    def log(self) -> Path:
        return self.root / "gateway.log"

    def _args(self, *verb: str) -> list[str]:
        return ketenpost_command(
            *verb, "--config", str(self.root / "gateway.toml"), "--store", self.store_url
        )

    async def migrate(self) -> str:
        process = await asyncio.create_subprocess_exec(
            *self._args("store", "migrate"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), READY_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DemoError("ketenpost store migrate did not finish") from None
        if process.returncode != 0:
            raise DemoError(f"ketenpost store migrate: {err.decode(errors='replace').strip()}")
        migrations: list[str] = json.loads(out)["migrations"]
        return ", ".join(migrations) or "none pending"

    async def start(self) -> None:
        args = self._args("serve")
        args += ["--listen", f"127.0.0.1:{self.port}"]
        args += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *args, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise DemoError(f"the gateway exited during start-up (see {self.log})")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.operator_url + "/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(POLL_S)
        raise DemoError(f"the gateway was not ready within {READY_TIMEOUT_S:g} s (see {self.log})")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# -- the partner systems -----------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


def write_system_table(folder: Path, table: dict[str, object]) -> None:
    """Replace the ``[system]`` table of ``folder``'s adapter.toml by ``table``."""
    path = folder / ADAPTER_TOML
    text = re.sub(r"(?ms)^\[system\]\n.*?(?=^\[|\Z)", "", path.read_text(encoding="utf-8"))
    lines = ["[system]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    path.write_text(text.rstrip() + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


_FakeT = TypeVar("_FakeT")


@dataclass
class Systems:
    """The partner systems' fakes that were started (every one, except in a sandbox, where
    the partners left out have none); ``stop(partner)`` takes one down."""

    zgw: dict[str, FakeZgw] = field(default_factory=dict)
    started: dict[str, object] = field(default_factory=dict)

    def _fake(self, partner: str, kind: type[_FakeT]) -> _FakeT:
        fake = self.started.get(partner)
        if not isinstance(fake, kind):
            raise DemoError(f"{partner}'s partner system was not started")
        return fake

    @property
    def police(self) -> FakePoliceSystem:
        return self._fake(POLICE, FakePoliceSystem)

    @property
    def cjg(self) -> FakeCjgSystem:
        return self._fake(CJG, FakeCjgSystem)

    @property
    def om(self) -> FakeOmSystem:
        return self._fake(OM, FakeOmSystem)

    @property
    def halt(self) -> FakeHaltSystem:
        return self._fake(HALT, FakeHaltSystem)

    @property
    def welfare(self) -> WelfareCaseSystem:
        return self._fake(WELFARE, WelfareCaseSystem)

    def describe(self) -> str:
        """What runs, for the timeline: ``4 zaaksystemen (ZGW), police REST, …``."""
        parts = [f"{len(self.zgw)} zaaksystemen (ZGW)"] if self.zgw else []
        parts += [_SYSTEM_NAMES[p] for p in (POLICE, CJG, OM, HALT, WELFARE) if p in self.started]
        return ", ".join(parts) or "none"

    async def stop(self, partner: str) -> None:
        if partner in self.zgw:
            await self.zgw[partner].close()
        elif partner == POLICE:
            await self.police.close()
        elif partner == CJG:
            await self.cjg.close()

    async def close(self) -> None:
        for fake in self.zgw.values():
            await fake.close()
        for partner in (POLICE, CJG, WELFARE):
            system = self.started.get(partner)
            if isinstance(system, FakePoliceSystem | FakeCjgSystem | WelfareCaseSystem):
                await system.close()


_SYSTEM_NAMES: Final = {
    POLICE: "police REST",
    CJG: "CJG REST",
    OM: "OM XML drop folder",
    HALT: "Halt CSV drop folder",
    WELFARE: "welfare SQLite",
}


async def _start_zgw(folder: Path, secret: bytes, clock: SystemClock) -> FakeZgw:
    fake = FakeZgw(clients={ZGW_CLIENT_ID: secret}, clock=clock)
    await fake.start()
    catalogi = fake.catalogi
    table: dict[str, object] = {
        "transport": "zgw",
        "zaken_api": fake.zaken_api,
        "documenten_api": fake.documenten_api,
        "client_id": ZGW_CLIENT_ID,
        "secret_file": "zgw.secret",
        "user_id": "ketenpost-adapter",
        "zaaktype": catalogi("zaaktypen", "jeugdaanpak"),
        "informatieobjecttype": catalogi("informatieobjecttypen", "ketenpost-bericht"),
        "roltype_jongere": catalogi("roltypen", "jongere"),
        **{
            f"statustype_{event}": catalogi("statustypen", event)
            for event in (
                "gestart",
                "gewijzigd",
                "casusoverleg",
                "plan",
                "beeindigd",
                "ingetrokken",
            )
        },
        "bronorganisatie": RSIN,
        "vertrouwelijkheidaanduiding": "vertrouwelijk",
        "poll_interval_s": 0,
    }
    write_system_table(folder, table)
    return fake


async def _start_police(folder: Path) -> FakePoliceSystem:
    police = FakePoliceSystem()
    await police.start()
    police.add_person(LOCAL_IDS[POLICE], YOUTH_GIVEN, f"{YOUTH_PREFIX} {YOUTH_FAMILY}", YOUTH_BORN)
    police.add_person(OTHER_PN, "Lotte", "Visser", datetime.date(2009, 6, 30))
    police.add_person(WITNESS_PN, "Anna", "Smit", datetime.date(1984, 2, 11))
    write_system_table(
        folder,
        {
            "transport": "police-rest",
            "listen": "127.0.0.1:0",
            "webhook_url": police.webhook_url,
            "refusals_url": police.refusals_url,
            "incidents_url": police.incidents_url,
            "timeout_s": 10,
            "connect_timeout_s": 3,
            "max_body_bytes": 1_048_576,
            "ingest_token_file": "",
        },
    )
    return police


async def _start_cjg(folder: Path) -> FakeCjgSystem:
    token = (folder / "secrets" / "cjg-api-token").read_text(encoding="utf-8").strip()
    cjg = FakeCjgSystem(token=token)
    await cjg.start()
    cjg.add_client(
        LOCAL_IDS[CJG], YOUTH_GIVEN, f"{YOUTH_PREFIX} {YOUTH_FAMILY}", YOUTH_BORN, YOUTH_BSN
    )
    write_system_table(
        folder,
        {
            "transport": "cjg-rest",
            "base_url": cjg.base_url,
            "api_token_file": "secrets/cjg-api-token",
            "poll_interval_s": 0,
            "page_size": 100,
            "timeout_s": 10,
            "connect_timeout_s": 3,
            "max_event_bytes": 262_144,
        },
    )
    return cjg


def _start_om(folder: Path) -> FakeOmSystem:
    # Drop folders: the development layout, without the settle time (module docstring).
    om = FakeOmSystem(folder, {"settle_s": 0})
    om.register(OmPerson(LOCAL_IDS[OM], YOUTH_GIVEN, f"{YOUTH_PREFIX} {YOUTH_FAMILY}", YOUTH_BORN))
    write_system_table(folder, om.system_table())
    return om


def _start_halt(folder: Path) -> FakeHaltSystem:
    halt = FakeHaltSystem(folder, {"settle_s": 0})
    halt.register(
        HaltDossier(LOCAL_IDS[HALT], YOUTH_GIVEN, f"{YOUTH_PREFIX} {YOUTH_FAMILY}", YOUTH_BORN)
    )
    write_system_table(folder, halt.system_table())
    return halt


async def _start_welfare(folder: Path) -> WelfareCaseSystem:
    # What the welfare organisation's DBA does once: the database with the Ketenpost tables
    # (the adapter never creates them). ``init`` wrote ``database = "welzijn.db"``.
    welfare = WelfareCaseSystem.sqlite(folder / "welzijn.db")
    await welfare.create_tables()
    await welfare.register_client(
        LOCAL_IDS[WELFARE], YOUTH_GIVEN, YOUTH_FAMILY, YOUTH_BORN, YOUTH_PREFIX
    )
    return welfare


async def start_systems(
    layout: DeploymentLayout, clock: SystemClock, without: frozenset[str] = frozenset()
) -> Systems:
    """Start the fakes with what ``ketenpost init`` prepared, register the youth in each
    partner's own register, and point each adapter.toml's ``[system]`` at its fake. The
    partners in ``without`` get none: their adapter.toml stays as ``init`` wrote it."""
    folders = {p.id: p.folder for p in layout.partners}
    systems = Systems()
    try:
        municipalities = [m for m in MUNICIPALITIES if m not in without]
        if municipalities:
            # The four share the development client credentials ``init`` wrote.
            secret = (folders[municipalities[0]] / "zgw.secret").read_bytes().strip()
            for municipality in municipalities:
                fake = await _start_zgw(folders[municipality], secret, clock)
                systems.zgw[municipality] = fake
        if POLICE not in without:
            systems.started[POLICE] = await _start_police(folders[POLICE])
        if CJG not in without:
            systems.started[CJG] = await _start_cjg(folders[CJG])
        if OM not in without:
            systems.started[OM] = _start_om(folders[OM])
        if HALT not in without:
            systems.started[HALT] = _start_halt(folders[HALT])
        if WELFARE not in without:
            systems.started[WELFARE] = await _start_welfare(folders[WELFARE])
    except BaseException:
        await systems.close()
        raise
    return systems


# -- the adapters ------------------------------------------------------------------------------


@dataclass
class Adapters:
    """Every partner's adapter, running as an asyncio task."""

    by_partner: dict[str, Adapter]
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]

    def __getitem__(self, partner: str) -> Adapter:
        return self.by_partner[partner]

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, STOP_TIMEOUT_S)
        for adapter in self.by_partner.values():
            with contextlib.suppress(Exception):
                await adapter.close()


async def start_adapters(
    layout: DeploymentLayout, clock: SystemClock, without: frozenset[str] = frozenset()
) -> Adapters:
    """Open and run the adapter of every partner not in ``without``."""
    registry = default_registry()
    stop = asyncio.Event()
    by_partner: dict[str, Adapter] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        for partner in layout.partners:
            if partner.id in without:
                continue
            config = load_partner_dir(partner.folder)
            adapter = Adapter(config, registry.create(config, clock), clock=clock, settings=ENGINE)
            await adapter.open()
            by_partner[partner.id] = adapter
            tasks.append(asyncio.create_task(adapter.run(stop), name=f"adapter {partner.id}"))
    except BaseException:
        await Adapters(by_partner, stop, tasks).close()
        raise
    return Adapters(by_partner, stop, tasks)


# -- the scenario ------------------------------------------------------------------------------

STEP_KEYS: Final = (
    "approach",
    "incident",
    "referral",
    "halt-progress",
    "case-conference",
    "cjg-contribution",
    "welfare-contribution",
    "no-token",
    "other-youth",
    "type-not-allowed",
    "revoke",
    "after-revocation",
)


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _dutch(day: datetime.date) -> str:
    return day.strftime("%d-%m-%Y")


@dataclass
class Scenario:
    """The covenant's story, step by step; each step checks what it caused."""

    systems: Systems
    adapters: Adapters
    gateway: Gateway
    folders: dict[str, Path]
    timeline: Timeline
    options: DemoOptions
    zaak: str = ""
    token_id: str = ""
    pseudonym: str = ""
    number: int = 0

    # -- helpers -------------------------------------------------------------------------

    def _wait(self, what: str, check: Callable[[], Awaitable[T | None]], step: str) -> Awaitable[T]:
        return until(what, check, self.options.step_timeout_s, step)

    async def _receipts(
        self, sender: str, message_id: str, recipients: Sequence[str], step: str
    ) -> None:
        """Until the sender's adapter holds a delivery receipt of every recipient (sender
        events, verified by the SDK)."""
        store = self.adapters[sender].store

        async def check() -> bool | None:
            outcomes = store.outcomes(message_id)
            bad = {r: o for r, o in outcomes.items() if o[0] != "receipt"}
            if bad:
                raise StepFailedError(step, f"{sender}'s message was not delivered: {bad}")
            return True if set(recipients) <= set(outcomes) else None

        await self._wait(f"delivery receipts of {', '.join(recipients)} at {sender}", check, step)

    def _outbox_row(self, partner: str, predicate: Callable[[str], bool]) -> Any:
        for row in self.adapters[partner].store.outbox():
            if predicate(row.record_id):
                return row
        return None

    async def _sent(self, partner: str, predicate: Callable[[str], bool], step: str) -> Any:
        async def check() -> Any:
            row = self._outbox_row(partner, predicate)
            if row is not None and row.state == "refused":
                raise StepFailedError(step, f"{partner}'s message was refused: {row.last_reason}")
            return row if row is not None and row.state == "accepted" else None

        return await self._wait(f"{partner}'s message accepted by the gateway", check, step)

    async def _refused(self, partner: str, predicate: Callable[[str], bool], step: str) -> Any:
        async def check() -> Any:
            row = self._outbox_row(partner, predicate)
            return row if row is not None and row.state == "refused" else None

        return await self._wait(f"{partner}'s message refused", check, step)

    def _documents(self, sender: str, message_type: str) -> list[dict[str, Any]]:
        """The informatieobjecten on Velsen's zaak from ``sender`` of ``message_type``."""
        found = []
        for eio, content in self.systems.zgw[VELSEN].informatieobjecten(self.zaak):
            document = json.loads(content)
            bericht = document.get("ketenpost_bericht") or {}
            if bericht.get("afzender") == sender and bericht.get("type") == message_type:
                found.append({"eio": eio, **bericht})
        return found

    async def _document(self, sender: str, message_id: str, step: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            for eio, content in self.systems.zgw[VELSEN].informatieobjecten(self.zaak):
                bericht = json.loads(content).get("ketenpost_bericht") or {}
                if bericht.get("bericht_id") == message_id:
                    return dict(eio)
            return None

        return await self._wait(
            f"the informatieobject of {sender}'s message on the zaak", check, step
        )

    async def _halt_file(self, name: str, step: str) -> list[dict[str, str]]:
        async def check() -> list[dict[str, str]] | None:
            return self.systems.halt.received().get(name)

        return await self._wait(f"in/{name} in Halt's drop folder", check, step)

    def _halt_csv_lines(self, name: str) -> list[str]:
        raw = (self.systems.halt.inbox / name).read_bytes().decode("utf-8-sig")
        return [f"halt/uitwisseling/in/{name}:", *(f"  {line}" for line in raw.splitlines())]

    # -- the steps -----------------------------------------------------------------------------

    async def run(self) -> None:
        steps: list[tuple[str, str, Callable[[str], Awaitable[None]]]] = [
            ("approach", "Velsen starts a person approach", self.approach),
            ("incident", "the police report an incident", self.incident),
            ("referral", "the OM refers the youth to Halt", self.referral),
            ("halt-progress", "Halt reports progress", self.halt_progress),
            ("case-conference", "Velsen convenes a case conference", self.case_conference),
            ("cjg-contribution", "the CJG contributes", self.cjg_contribution),
            ("welfare-contribution", "welfare contributes", self.welfare_contribution),
            ("no-token", "refused: no approach", self.no_token),
            ("other-youth", "refused: another youth", self.other_youth),
            ("type-not-allowed", "refused: type not allowed", self.type_not_allowed),
            ("revoke", "Velsen revokes the approach", self.revoke),
            ("after-revocation", "refused: after revocation", self.after_revocation),
        ]
        assert tuple(k for k, _, _ in steps) == STEP_KEYS
        for number, (key, name, action) in enumerate(steps, start=1):
            self.number = number
            fault = self.options.fault
            if fault is not None and fault.before == key:
                await self.systems.stop(fault.partner)
                self.timeline.note(f"fault: {fault.partner}'s system stopped before {key!r}")
            try:
                await action(key)
            except StepFailedError as exc:
                self.timeline.failed(number, f"{key}: {name}", exc.detail)
                raise

    async def approach(self, step: str) -> None:
        zgw = self.systems.zgw[VELSEN]
        zaak = zgw.create_zaak(
            zaaktype=zgw.catalogi("zaaktypen", "jeugdaanpak"),
            bronorganisatie=RSIN,
            identificatie=ZAAK_ID,
        )
        self.zaak = str(zaak["url"])
        zgw.add_rol(
            self.zaak,
            roltype=zgw.catalogi("roltypen", "jongere"),
            identificatie={
                "inpBsn": YOUTH_BSN,
                "voornamen": YOUTH_GIVEN,
                "voorvoegselGeslachtsnaam": YOUTH_PREFIX,
                "geslachtsnaam": YOUTH_FAMILY,
                "geboortedatum": YOUTH_BORN.isoformat(),
                "verblijfsadres": {
                    "aoaIdentificatie": "0453200000012345",
                    "wplWoonplaatsNaam": "IJmuiden",
                    "gorOpenbareRuimteNaam": "Kennemerlaan",
                    "aoaPostcode": "1972 EG",
                    "aoaHuisnummer": 12,
                },
            },
        )
        informed = _today() - datetime.timedelta(days=1)
        for naam, waarde in {
            "aanpak_soort": "persoonsgericht",
            "aanpak_deelnemers": ",".join(PARTICIPANTS),
            "geinformeerd_op": informed.isoformat(),
            "informeren_toelichting": "Jongere en ouders geïnformeerd in een gesprek op het "
            "gemeentehuis; brief nagestuurd.",
            "regisseur": "Regisseur jeugd Velsen, 0255 567 200",
        }.items():
            zgw.set_eigenschap(self.zaak, naam, waarde)
        zgw.set_status(self.zaak, zgw.catalogi("statustypen", "gestart"))
        velsen = self.adapters[VELSEN]

        async def registered() -> str | None:
            kenmerken = zgw.zaken[str(zaak["uuid"])].get("kenmerken") or []
            for kenmerk in kenmerken:
                row = velsen.store.token(str(kenmerk.get("kenmerk")))
                if row is not None and row.registered_at is not None:
                    return row.token_id
            return None

        self.token_id = await self._wait(
            "the token registered and kept on the zaak", registered, step
        )
        (self.pseudonym,) = velsen.store.local_ids(self.token_id)

        async def matched() -> dict[str, str] | None:
            found = {}
            for partner in PARTICIPANTS:
                local = self.adapters[partner].store.local_ids(self.token_id).get(self.pseudonym)
                if local is not None:
                    found[partner] = local
            return found if len(found) == len(PARTICIPANTS) else None

        try:
            found = await self._wait("every participant matched the youth", matched, step)
        except StepFailedError:
            missing = [
                p
                for p in PARTICIPANTS
                if self.pseudonym not in self.adapters[p].store.local_ids(self.token_id)
            ]
            raise StepFailedError(
                step, f"not matched in their own register: {', '.join(missing)}"
            ) from None
        wrong = {p: v for p, v in found.items() if v != LOCAL_IDS[p]}
        if wrong:
            raise StepFailedError(step, f"matched to the wrong person: {wrong}")
        for partner in PARTICIPANTS:
            row = self._outbox_row(VELSEN, _ends_with(f"/notice:{partner}"))
            if row is None:
                raise StepFailedError(step, f"no approach-notice for {partner}")
            await self._receipts(VELSEN, row.message_id, (partner,), step)
        self.timeline.step(
            self.number,
            VELSEN,
            ", ".join(PARTICIPANTS),
            f"approach-notice (zaak {ZAAK_ID} 'aanpak gestart'; youth and parents informed "
            f"{informed.isoformat()})",
            f"token {self.token_id[:12]}… issued and registered, on the zaak's kenmerken; "
            "delivered to all five",
        )
        self.timeline.detail([f"matched in its own register: {p} {found[p]}" for p in PARTICIPANTS])

    async def incident(self, step: str) -> None:
        source = self.adapters[POLICE].transport.source
        assert isinstance(source, PoliceSource)
        document = incident(
            INCIDENT,
            [(LOCAL_IDS[POLICE], "verdachte"), (WITNESS_PN, "getuige")],
            ontvangers=(VELSEN, HALT),
            categorie="vernieling",
            datum=f"{_today().isoformat()}T22:40:00+01:00",
            omschrijving="Bushokje aan de Kennemerlaan vernield; verdachte ter plaatse "
            "aangesproken.",
        )
        try:
            status, answer = await post_incident(source.url, document)
        except aiohttp.ClientError as exc:
            raise StepFailedError(step, f"the police adapter's endpoint: {exc}") from None
        if status != 202:
            raise StepFailedError(step, f"the police adapter answered {status}: {answer}")
        row = await self._sent(POLICE, lambda r: r == answer["kenmerk"], step)
        await self._receipts(POLICE, row.message_id, (VELSEN, HALT), step)
        police = self.systems.police

        async def shown() -> bool | None:
            return True if sorted(police.delivered_to(INCIDENT)) == sorted((VELSEN, HALT)) else None

        # The police adapter reports each delivery on the incident (``report_delivery``).
        await self._wait("both deliveries shown on the police incident", shown, step)
        await self._document(POLICE, row.message_id, step)
        name = f"{row.message_id}.csv"
        await self._halt_file(name, step)
        self.timeline.step(
            self.number,
            POLICE,
            f"{VELSEN}, {HALT}",
            "signal (incident PL1200-2026-0412345 POSTed to the adapter; the witness is not "
            "shared)",
            "informatieobject on Velsen's zaak; a CSV appeared in Halt's drop folder; "
            "both delivery receipts back at the police, shown on its incident as delivered",
        )
        self.timeline.detail(self._halt_csv_lines(name))

    async def referral(self, step: str) -> None:
        data = self.systems.om.verwijzing([LOCAL_IDS[OM]], ontvangers=(HALT,))
        self.systems.om.drop("verwijzing-15-123456-26.xml", data)
        row = await self._sent(OM, lambda r: r.startswith("verwijzing-15-123456-26.xml:"), step)
        await self._receipts(OM, row.message_id, (HALT,), step)
        rows = await self._halt_file(f"{row.message_id}.csv", step)
        self.timeline.step(
            self.number,
            OM,
            HALT,
            "referral (Verwijzing XML dropped into om/drop/in/)",
            f"Halt's drop folder has it (delictcategorie {rows[0].get('delictcategorie')}, "
            f"zaaknummer {rows[0].get('zaaknummer')}); receipt back at the OM",
        )

    async def halt_progress(self, step: str) -> None:
        name = f"voortgang-{_today():%Y%m%d}.csv"
        self.systems.halt.export(
            name,
            [
                self.systems.halt.voortgang(
                    LOCAL_IDS[HALT],
                    datum=_dutch(_today()),
                    status="loopt",
                    toelichting="Intakegesprek gevoerd met jongere en ouders; leerproject gepland.",
                    ontvangers=VELSEN,
                )
            ],
        )
        row = await self._sent(HALT, lambda r: r.startswith(f"{name}:"), step)
        await self._receipts(HALT, row.message_id, (VELSEN,), step)
        eio = await self._document(HALT, row.message_id, step)
        self.timeline.step(
            self.number,
            HALT,
            VELSEN,
            f"progress (CSV {name} exported into halt/uitwisseling/uit/)",
            f"informatieobject {eio['identificatie'][:14]}… '{eio['titel']}' on zaak {ZAAK_ID}",
        )

    async def case_conference(self, step: str) -> None:
        zgw = self.systems.zgw[VELSEN]
        day = _today() + datetime.timedelta(days=7)
        zgw.set_eigenschap(self.zaak, "casusoverleg_datum", day.isoformat())
        zgw.set_eigenschap(
            self.zaak,
            "casusoverleg_agenda",
            "Stand van zaken Halt-afdoening\nSchoolgang en vrije tijd\nAfspraken met ouders",
        )
        zgw.set_status(self.zaak, zgw.catalogi("statustypen", "casusoverleg"))
        row = await self._sent(VELSEN, lambda r: r.endswith("/casusoverleg"), step)
        await self._receipts(VELSEN, row.message_id, PARTICIPANTS, step)

        async def cjg_has() -> bool | None:
            return True if self.systems.cjg.inbound_of("case-conference") else None

        async def welfare_has() -> bool | None:
            return True if await self.systems.welfare.inbox("case-conference") else None

        await self._wait("the case-conference in the CJG system", cjg_has, step)
        await self._wait("the case-conference in welfare's inbox table", welfare_has, step)
        self.timeline.step(
            self.number,
            VELSEN,
            ", ".join(PARTICIPANTS),
            f"case-conference (zaak status 'casusoverleg', {day.isoformat()})",
            "in the CJG system (POST /inbound), in welfare's ketenpost_inkomend table and "
            "with police, OM and Halt; five receipts back at Velsen",
        )

    async def cjg_contribution(self, step: str) -> None:
        event = self.systems.cjg.add_case_conference(
            [LOCAL_IDS[CJG]],
            ontvangers=(VELSEN,),
            datum=(_today() + datetime.timedelta(days=7)).isoformat(),
            deelnemers=(VELSEN, CJG, WELFARE),
            agenda=("Opvoedondersteuning", "Schoolgang"),
            besluiten=("CJG start gezinscoaching, acht weken.",),
        )
        row = await self._sent(CJG, lambda r: r == event, step)
        await self._receipts(CJG, row.message_id, (VELSEN,), step)
        await self._document(CJG, row.message_id, step)
        self.timeline.step(
            self.number,
            CJG,
            VELSEN,
            "case-conference contribution (event on the CJG's feed)",
            "informatieobject on Velsen's zaak",
        )

    async def welfare_contribution(self, step: str) -> None:
        row_id = await self.systems.welfare.write_outbox(
            "casusoverleg-bijdrage",
            LOCAL_IDS[WELFARE],
            VELSEN,
            {
                "datum": (_today() + datetime.timedelta(days=7)).isoformat(),
                "agendapunten": ["Vrije tijd: jongerenwerk Velserbroek"],
                "afspraken": ["Jongerenwerker neemt Sem mee naar het sportaanbod."],
            },
        )
        row = await self._sent(WELFARE, lambda r: r == str(row_id), step)
        await self._receipts(WELFARE, row.message_id, (VELSEN,), step)
        await self._document(WELFARE, row.message_id, step)
        self.timeline.step(
            self.number,
            WELFARE,
            VELSEN,
            "case-conference contribution (row in welfare's ketenpost_uitgaand table)",
            "informatieobject on Velsen's zaak",
        )

    async def no_token(self, step: str) -> None:
        source = self.adapters[POLICE].transport.source
        assert isinstance(source, PoliceSource)
        number = "PL1200-2026-0412399"
        status, _answer = await post_incident(
            source.url,
            incident(number, [(OTHER_PN, "verdachte")], ontvangers=(VELSEN, HALT)),
        )
        if status != 202:
            raise StepFailedError(step, f"the police adapter answered {status}")

        async def reported() -> dict[str, Any] | None:
            refusals = self.systems.police.refusals_for(number)
            return refusals[0] if refusals else None

        refusal = await self._wait("the refusal reported to the police system", reported, step)
        self._expect_reason(step, refusal.get("reden"), "no_token")
        self.timeline.step(
            self.number,
            POLICE,
            f"{VELSEN}, {HALT}",
            f"signal about a youth without an approach (incident {number})",
            f"REFUSED by the police adapter before sending: {refusal['reden']} "
            f"({refusal.get('toelichting')}); reported to the police system",
        )

    async def other_youth(self, step: str) -> None:
        # A care worker uses the command line (`ketenpost send`) and names a youth who is not
        # in this approach: the adapter's own mapping would never do that, the gateway refuses.
        body = encode_body(
            Progress(
                subjects=(new_pseudonym(),),
                status=ProgressStatus.CONCERN,
                summary="Zorgen over een andere jongere uit dezelfde vriendengroep.",
                reported_on=_today(),
            )
        )
        body_file = self.folders[CJG] / "demo-other-youth.json"
        body_file.write_bytes(body)
        args = argparse_namespace(
            type="progress",
            to=[VELSEN],
            body=str(body_file),
            approach=self.token_id,
            record_id="demo:other-youth",
            expires_in_days=14,
            gateway=self.gateway.url,
        )
        try:
            await send(args, PartnerFolder.open(self.folders[CJG], os.environ), int(time.time()))
        except RefusedError as exc:
            reason = exc.reason.value if exc.reason is not None else f"http_{exc.status}"
            self._expect_reason(step, reason, "subject_not_in_token")
            detail = exc.detail
        except CliError as exc:
            raise StepFailedError(step, f"ketenpost send: {exc}") from None
        else:
            raise StepFailedError(step, "the gateway accepted a message about another youth")
        self.timeline.step(
            self.number,
            CJG,
            VELSEN,
            "progress about another youth under Velsen's approach (`ketenpost send`)",
            f"REFUSED by the gateway: {reason} ({detail})",
        )

    async def type_not_allowed(self, step: str) -> None:
        row_id = await self.systems.welfare.write_outbox(
            "signaal",
            LOCAL_IDS[WELFARE],
            POLICE,
            {
                "datum": _today().isoformat(),
                "categorie": "overlast",
                "samenvatting": "Melding van overlast bij het jongerencentrum.",
                "gemeente": "Velsen",
            },
        )
        await self._refused(WELFARE, lambda r: r == str(row_id), step)

        async def told() -> Any:
            row = await self.systems.welfare.outbox_row(row_id)
            return row if row.status == "geweigerd" else None

        outbox_row = await self._wait("the refusal written into welfare's outbox row", told, step)
        self._expect_reason(step, outbox_row.reden_code, "type_not_allowed")
        self.timeline.step(
            self.number,
            WELFARE,
            POLICE,
            "signal (welfare may not signal the police under the covenant)",
            f"REFUSED by the gateway: {outbox_row.reden_code}; ketenpost_uitgaand row "
            f"{row_id} is now '{outbox_row.status}'",
        )

    async def revoke(self, step: str) -> None:
        zgw = self.systems.zgw[VELSEN]
        zgw.set_status(self.zaak, zgw.catalogi("statustypen", "ingetrokken"))
        client = self.adapters[VELSEN].client

        async def revoked() -> int | None:
            status = await client.approach(self.token_id)
            value = status.get("revoked_at")
            return int(value) if value is not None else None

        await self._wait("the token revoked at the gateway", revoked, step)
        self.timeline.step(
            self.number,
            VELSEN,
            "gateway",
            "revoke the approach (zaak status 'ingetrokken')",
            f"token {self.token_id[:12]}… revoked; its undelivered messages purged",
        )

    async def after_revocation(self, step: str) -> None:
        name = f"voortgang-{_today():%Y%m%d}-2.csv"
        self.systems.halt.export(
            name,
            [
                self.systems.halt.voortgang(
                    LOCAL_IDS[HALT],
                    datum=_dutch(_today()),
                    status="loopt",
                    toelichting="Leerproject gestart.",
                    ontvangers=VELSEN,
                )
            ],
        )
        row = await self._refused(HALT, lambda r: r.startswith(f"{name}:"), step)
        rows = await self._halt_file(f"weigering-{row.message_id}.csv", step)
        reason = rows[0].get("reden") if rows else None
        self._expect_reason(step, reason, "token_revoked")
        self.timeline.step(
            self.number,
            HALT,
            VELSEN,
            f"progress after the revocation (CSV {name})",
            f"REFUSED by the gateway: {reason}; weigering-….csv in Halt's drop folder",
        )

    def _expect_reason(self, step: str, got: object, expected: str) -> None:
        if got != expected:
            raise StepFailedError(step, f"refused with {got!r}, expected {expected!r}")


def _ends_with(suffix: str) -> Callable[[str], bool]:
    return lambda record_id: record_id.endswith(suffix)


def argparse_namespace(**values: Any) -> Any:
    """The arguments ``adapters.cli_partner.send`` reads, as its command line would give them."""
    return argparse.Namespace(**values)


# -- running it --------------------------------------------------------------------------------


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send the adapters' logs to ``path`` for the demo's duration: the timeline is the output."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


async def _wait_for_interrupt() -> None:
    """Serve until SIGINT or SIGTERM: the signals now end the wait (a normal stop, exit 0)
    instead of cancelling the demo."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _play(
    systems: Systems,
    adapters: Adapters,
    gateway: Gateway,
    layout: DeploymentLayout,
    timeline: Timeline,
    options: DemoOptions,
) -> bool:
    """Play the scenario and print its timeline; ``True`` when every step behaved."""
    folder = layout.root
    scenario = Scenario(
        systems,
        adapters,
        gateway,
        {p.id: p.folder for p in layout.partners},
        timeline,
        options,
    )
    try:
        await scenario.run()
    except StepFailedError as exc:
        print(f"ketenpost: error: demo {exc}", file=sys.stderr, flush=True)
        return False
    timeline.note(f"all {len(STEP_KEYS)} steps behaved as expected")
    # The coordinator knows the youth's pseudonym (its adapter holds the mapping): what was
    # shared about him can be reported and verified from the command line.
    report = folder / "inzage"
    timeline.note(
        "subject access: ketenpost audit subject "
        f"{scenario.pseudonym} --config {folder / 'gateway.toml'} "
        f"--store {gateway.store_url} --out {report}"
    )
    timeline.note(
        f"verify it: ketenpost audit verify-report {report / 'inzage.json'} "
        f"--directory {folder / 'directory'}"
    )
    return True


def _sandbox(gateway: Gateway, layout: DeploymentLayout, without: frozenset[str]) -> list[str]:
    """The lines that tell a developer where the partners left out are and how to run an
    adapter for each: the gateway and its metrics, each one's folder and adapter.toml, and
    ``ketenpost adapter run`` with a ``--metrics-listen`` port of its own (free now, and none
    of the demo's: the gateway and the fakes hold theirs)."""
    lines = [f"gateway: {gateway.url}", f"metrics: {gateway.operator_url}/metrics"]
    taken: set[int] = set()
    for partner in layout.partners:
        if partner.id not in without:
            continue
        port = free_port()
        while port in taken:
            port = free_port()
        taken.add(port)
        folder = partner.folder.resolve()
        toml = folder / ADAPTER_TOML
        command = ["ketenpost", "adapter", "run", partner.id, "--config", str(toml)]
        command += ["--metrics-listen", f"127.0.0.1:{port}"]
        lines += [
            f"{partner.id}:",
            f"  folder:       {folder}",
            f"  adapter.toml: {toml}",
            f"  run:          {shlex.join(command)}",
        ]
    return lines


async def run_demo(options: DemoOptions, init: InitDeployment, out: TextIO) -> bool:
    """Play the scenario; ``True`` when every step behaved. Raises ``DemoError`` when the demo
    cannot set up. Without ``options.once`` the gateway keeps serving until Ctrl-C or SIGTERM.

    With ``options.without`` (a sandbox) the partners named get no fake and no adapter, the
    scenario is not played (it needs every partner), and what a developer needs to run an
    adapter in their place is printed instead; the demo then serves until Ctrl-C or SIGTERM
    and returns ``True``."""
    # A SIGINT or SIGTERM before the demo serves (while it starts or plays) cancels it, so the
    # clean-up below still stops the gateway subprocess, the adapters and the fakes; the
    # default action would end the process and leave the gateway running.
    with _cancelled_by_signals():
        return await _run_demo(options, init, out)


@contextlib.contextmanager
def _cancelled_by_signals() -> Iterator[None]:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        if task is not None:
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
    try:
        yield
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


async def _run_demo(options: DemoOptions, init: InitDeployment, out: TextIO) -> bool:
    folder = options.folder or Path(tempfile.mkdtemp(prefix="ketenpost-demo-"))
    timeline = Timeline(out)
    gateway = Gateway(folder, free_port())
    layout = init(folder, now=int(time.time()), gateway_url=gateway.url)
    timeline.note(f"deployment made in {folder} (ketenpost init)")
    clock = SystemClock()
    left_out = ", ".join(p.id for p in layout.partners if p.id in options.without)
    with _logs_to(folder / "demo.log"):
        timeline.note(f"store migrated ({await gateway.migrate()})")
        systems: Systems | None = None
        adapters: Adapters | None = None
        try:
            systems = await start_systems(layout, clock, options.without)
            up = f"fake partner systems up: {systems.describe()}"
            timeline.note(f"{up} (none for {left_out})" if left_out else up)
            await gateway.start()
            timeline.note(f"gateway serving on {gateway.url} (ketenpost serve, SQLite store)")
            adapters = await start_adapters(layout, clock, options.without)
            running = f"{len(adapters.by_partner)} adapters running"
            timeline.note(f"{running} (none for {left_out})" if left_out else running)
            if options.without:
                ok = True
                timeline.note(
                    f"sandbox: the scenario is not played (it needs every partner); "
                    f"run your own adapter for {left_out}:"
                )
                timeline.detail(_sandbox(gateway, layout, options.without))
            else:
                ok = await _play(systems, adapters, gateway, layout, timeline, options)
                timeline.note(f"metrics: {gateway.operator_url}/metrics")
            timeline.note(f"logs: {folder / 'gateway.log'}, {folder / 'demo.log'}")
            if not options.once:
                timeline.note("the gateway and the adapters keep running; Ctrl-C stops them")
                await _wait_for_interrupt()
            return ok
        finally:
            if adapters is not None:
                await adapters.close()
            await gateway.stop()
            if systems is not None:
                await systems.close()


PARTNERS: Final = (*MUNICIPALITIES, POLICE, OM, HALT, CJG, WELFARE)


def parse_without(text: str) -> frozenset[str]:
    """``PARTNER[,PARTNER…]`` (partner ids of the development covenant); ``ValueError``
    naming an unknown id and the known ones."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ValueError(f"--without {text!r}: give partner ids separated by commas")
    for name in names:
        if name not in PARTNERS:
            raise ValueError(
                f"--without: unknown partner {name!r} (known: {', '.join(sorted(PARTNERS))})"
            )
    return frozenset(names)


def options_from(
    folder: str | None, once: bool, step_timeout_s: float, without: Sequence[str] = ()
) -> DemoOptions:
    """The options of the command line and ``KETENPOST_DEMO_FAULT``; ``ValueError``.

    ``without`` holds the ``--without`` values as given (each ``PARTNER[,PARTNER…]``)."""
    raw = os.environ.get(FAULT_ENV, "")
    left_out = frozenset().union(*(parse_without(w) for w in without))
    if left_out and once:
        raise ValueError("--once exits after the scenario, which --without does not play")
    if left_out and raw:
        raise ValueError(f"{FAULT_ENV} stops a step of the scenario, which --without does not play")
    return DemoOptions(
        folder=Path(folder) if folder else None,
        once=once,
        step_timeout_s=step_timeout_s,
        fault=Fault.parse(raw) if raw else None,
        without=left_out,
    )


__all__ = [
    "DemoError",
    "DemoOptions",
    "Fault",
    "InitDeployment",
    "StepFailedError",
    "options_from",
    "parse_without",
    "run_demo",
]
