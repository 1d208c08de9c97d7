"""The municipalities' ZGW adapter end to end: a fake zaaksysteem (``adapters.testing.zgw_fake``)
on 127.0.0.1, the coordinator's adapter and partner adapters through a real gateway."""

from __future__ import annotations

import datetime
import json
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from openapi_schema_validator import OAS30ReadValidator

from adapters.base import SystemClock
from adapters.client import RefusedError
from adapters.config import load_partner_dir
from adapters.engine import Adapter, EngineSettings, FaultPoint
from adapters.errors import AdapterConfigError
from adapters.partners._zgw_client import ZgwClient, ZgwCredentials, ZgwRefusedError
from adapters.partners.zgw import DEFAULT_SYSTEM_TOML, KENMERK_BRON, create_transport
from adapters.testing.zgw_fake import FakeZgw
from gateway.protocol.messages import ApproachChange, ApproachNotice, Closure
from gateway.protocol.reasons import Reason
from gateway.protocol.types import MessageType
from tests.adapters.conftest import BSN_A, Net
from tests.gateway.conftest import DAY

SECRET = b"s" * 48
CLIENT_ID = "ketenpost-velsen"
RSIN = "999990007"
# Copied from ../shared/specs/zgw/ with their licences, so a clone alone runs the suite.
SPECS = Path(__file__).resolve().parents[1] / "specs" / "zgw"
EVENTS = ("gestart", "gewijzigd", "casusoverleg", "plan", "beeindigd", "ingetrokken")


@pytest.fixture
async def zgw(net: Net) -> AsyncIterator[FakeZgw]:
    fake = FakeZgw(clients={CLIENT_ID: SECRET}, clock=net.gw.clock, page_size=2)
    async with fake:
        fake.eindstatustypen = frozenset({statustype(fake, "beeindigd")})
        yield fake


def statustype(fake: FakeZgw, event: str) -> str:
    return fake.catalogi("statustypen", event)


def system_table(fake: FakeZgw, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(DEFAULT_SYSTEM_TOML)["system"]
    table.update(
        zaken_api=fake.zaken_api,
        documenten_api=fake.documenten_api,
        client_id=CLIENT_ID,
        zaaktype=fake.catalogi("zaaktypen", "jeugdaanpak"),
        informatieobjecttype=fake.catalogi("informatieobjecttypen", "ketenpost-bericht"),
        roltype_jongere=fake.catalogi("roltypen", "jongere"),
        bronorganisatie=RSIN,
        poll_interval_s=0,
        **{f"statustype_{e}": statustype(fake, e) for e in EVENTS},
    )
    table.update(overrides)
    return table


async def coordinator(
    net: Net, fake: FakeZgw, faults: Callable[[str], None] | None = None
) -> Adapter:
    folder = net.folder("gemeente-velsen")
    # ``ketenpost init`` wrote a development secret; the test's fake knows this one.
    secret = folder / "zgw.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    config = msgspec.structs.replace(load_partner_dir(folder), system=system_table(fake))
    adapter = Adapter(
        config,
        create_transport(config, net.gw.clock),
        clock=net.gw.clock,
        settings=EngineSettings(backoff_base_s=1),
        gateway_url=net.gw.url,
        faults=faults,
    )
    await adapter.open()
    net.open_adapters.append(adapter)
    return adapter


def today(net: Net, days: int = 0) -> str:
    moment = datetime.datetime.fromtimestamp(net.gw.clock.now() + days * DAY, datetime.UTC)
    return moment.date().isoformat()


YOUTH = {
    "inpBsn": BSN_A,
    "voornamen": "Sem",
    "voorvoegselGeslachtsnaam": "de",
    "geslachtsnaam": "Vries",
    "geboortedatum": "2010-04-01",
    "verblijfsadres": {
        "aoaIdentificatie": "0453200000012345",
        "wplWoonplaatsNaam": "IJmuiden",
        "gorOpenbareRuimteNaam": "Kennemerlaan",
        "aoaPostcode": "1972 EG",
        "aoaHuisnummer": 12,
        "aoaHuisletter": "A",
    },
}


def new_zaak(
    net: Net,
    fake: FakeZgw,
    *,
    participants: str = "politie-ijmond,cjg,welzijn-ijmond",
    youth: dict[str, Any] | None = None,
    **eigenschappen: str,
) -> dict[str, Any]:
    zaak = fake.create_zaak(
        zaaktype=fake.catalogi("zaaktypen", "jeugdaanpak"),
        bronorganisatie=RSIN,
        identificatie="ZAAK-VLS-2026-0042",
    )
    fake.add_rol(
        zaak["url"], roltype=fake.catalogi("roltypen", "jongere"), identificatie=youth or YOUTH
    )
    values = {
        "aanpak_soort": "persoonsgericht",
        "aanpak_deelnemers": participants,
        "geinformeerd_op": today(net, -1),
        "regisseur": "Regisseur jeugd Velsen, 0255 567 200",
        **eigenschappen,
    }
    for naam, waarde in values.items():
        fake.set_eigenschap(zaak["url"], naam, waarde)
    return zaak


def token_ids(fake: FakeZgw, zaak: dict[str, Any]) -> list[str]:
    return [
        k["kenmerk"] for k in fake.zaken[zaak["uuid"]]["kenmerken"] if k["bron"] == KENMERK_BRON
    ]


async def started(net: Net, fake: FakeZgw, **kwargs: Any) -> tuple[Adapter, dict[str, Any], str]:
    """A zaak reaching 'aanpak gestart', its notices sent; (coordinator, zaak, token id)."""
    velsen = await coordinator(net, fake)
    zaak = new_zaak(net, fake, **kwargs)
    fake.set_status(zaak["url"], statustype(fake, "gestart"))
    await velsen.ingest_once()
    sent = await velsen.send_once()
    assert sent.refused == [], velsen.store.outbox()
    (token_id,) = token_ids(fake, zaak)
    return velsen, zaak, token_id


def notice_of(net: Net, partner: str) -> ApproachNotice:
    notices = [
        c.body for c in net.system(partner).cases.values() if isinstance(c.body, ApproachNotice)
    ]
    assert notices, partner
    return notices[-1]


async def test_aanpak_gestart_issues_registers_and_notifies_per_role(
    net: Net, zgw: FakeZgw
) -> None:
    velsen, zaak, token_id = await started(net, zgw)
    rows = velsen.store.outbox()
    assert sorted(r.recipients for r in rows) == [
        ("cjg",),
        ("politie-ijmond",),
        ("welzijn-ijmond",),
    ]
    assert {r.state for r in rows} == {"accepted"}
    # Registered at the gateway, and the zaak is found by the token id in its kenmerken.
    approach = await (await net.gw.client("gemeente-velsen")).approach(token_id)
    assert approach["registered_at"] is not None
    assert approach["revoked_at"] is None
    assert zgw.zaak_by_kenmerk(token_id) == [zgw.zaken[zaak["uuid"]]]
    (pseudonym,) = velsen.store.local_ids(token_id)
    assert velsen.store.local_ids(token_id) == {pseudonym: BSN_A}

    for partner in ("politie-ijmond", "cjg", "welzijn-ijmond"):
        received = await (await net.adapter(partner)).receive_once()
        assert len(received.applied) == 1, (partner, received)
    name = {"given_name": "Sem", "family_name": "de Vries"}
    born = {"date_of_birth": datetime.date(2010, 4, 1)}
    expected: dict[str, dict[str, Any]] = {
        "politie-ijmond": {**name, **born},
        "welzijn-ijmond": {**name, **born},  # ADR 9: no address, no BSN
        "cjg": {**name, **born, "bsn": BSN_A},
    }
    for partner, fields in expected.items():
        notice = notice_of(net, partner)
        assert notice.change is ApproachChange.STARTED
        assert notice.contact == "Regisseur jeugd Velsen, 0255 567 200"
        (person,) = notice.persons
        got = {k: v for k, v in msgspec.structs.asdict(person).items() if v is not None}
        assert {k: v for k, v in got.items() if k not in ("pseudonym", "address")} == fields
        assert person.pseudonym == pseudonym
        assert (person.address is not None) == (partner == "cjg"), partner
    cjg_address = notice_of(net, "cjg").persons[0].address
    assert cjg_address is not None
    assert (cjg_address.postcode, cjg_address.house_number) == ("1972EG", "12 A")
    private = notice_of(net, "cjg").token_private.decoded()
    assert private.decision_reference == "ZAAK-VLS-2026-0042"
    assert set(private.purposes) == {"municipality", "police", "youth-care", "welfare"}
    # Reading the zaak again changes nothing: no second token, no second message.
    await velsen.ingest_once()
    assert len(velsen.store.outbox()) == 3
    assert token_ids(zgw, zaak) == [token_id]


async def test_two_messages_of_one_approach_make_one_zaak_with_two_informatieobjecten(
    net: Net, zgw: FakeZgw
) -> None:
    velsen, zaak, token_id = await started(net, zgw, participants="cjg")
    cjg = await net.adapter("cjg")
    await cjg.receive_once()
    for n in (1, 2):
        net.system("cjg").add_event(
            f"CJG-{n}",
            {"type": "progress", "about": [BSN_A], "to": ["gemeente-velsen"], "date": today(net)},
        )
    await cjg.ingest_once()
    assert len((await cjg.send_once()).accepted) == 2
    # The coordinator's adapter crashes after writing the first message into the zaaksysteem
    # and before recording it; the gateway delivers it again after the lease.
    await net.close(velsen)

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == FaultPoint.APPLIED.value:
            raise Crash(at)

    crashing = await coordinator(net, zgw, faults=fault)
    with pytest.raises(Crash):
        await crashing.receive_once()
    await net.close(crashing)
    net.gw.clock.advance(net.gw.built.config.limits.lease_s + 1)
    velsen = await coordinator(net, zgw)
    got = await velsen.receive_once()
    assert len(got.applied) == 2
    assert zgw.zaak_by_kenmerk(token_id) == [zgw.zaken[zaak["uuid"]]]
    assert len(zgw.zaken) == 1
    documents = zgw.informatieobjecten(zaak["url"])
    assert len(documents) == 2
    for eio, content in documents:
        assert eio["bronorganisatie"] == RSIN
        assert eio["vertrouwelijkheidaanduiding"] == "vertrouwelijk"
        rendered = json.loads(content)
        assert rendered["ketenpost_bericht"]["type"] == "progress"
        assert rendered["ketenpost_bericht"]["aanpak_token"] == token_id
        assert rendered["ketenpost_bericht"]["betrokkenen"][0]["lokaal_id"] == BSN_A
        assert eio["identificatie"] == "KP" + rendered["ketenpost_bericht"]["bericht_id"][:38]


async def test_changed_participants_supersede_the_token(net: Net, zgw: FakeZgw) -> None:
    velsen, zaak, old = await started(net, zgw, participants="politie-ijmond,cjg")
    (pseudonym,) = velsen.store.local_ids(old)
    zgw.set_eigenschap(zaak["url"], "aanpak_deelnemers", "politie-ijmond,cjg,halt")
    net.gw.clock.advance(60)
    zgw.set_status(zaak["url"], statustype(zgw, "gewijzigd"))
    await velsen.ingest_once()
    assert len((await velsen.send_once()).accepted) == 3
    first, new = token_ids(zgw, zaak)
    assert first == old
    gateway = await net.gw.client("gemeente-velsen")
    assert (await gateway.approach(old))["superseded_by"] == new
    assert (await gateway.approach(new))["supersedes"] == old
    halt = await net.adapter("halt")
    assert len((await halt.receive_once()).applied) == 1
    notice = notice_of(net, "halt")
    assert (notice.token_id, notice.change) == (new, ApproachChange.CHANGED)
    # The youth keeps the pseudonym; partners keep their mapping.
    assert notice.subjects == (pseudonym,)
    # The old token is refused by the gateway from now on.
    stale = net.gw.seal(
        None,
        sender="politie-ijmond",
        to=("halt",),
        token_id=old,
        token_hash_=(await gateway.approach(old))["token_hash"],
        subjects=(pseudonym,),
    )
    with pytest.raises(RefusedError) as refused:
        await (await net.gw.client("politie-ijmond")).submit(stale)
    assert refused.value.reason is Reason.TOKEN_SUPERSEDED


async def test_ingetrokken_revokes_the_token(net: Net, zgw: FakeZgw) -> None:
    velsen, zaak, token_id = await started(net, zgw, participants="politie-ijmond,halt")
    net.gw.clock.advance(60)
    zgw.set_status(zaak["url"], statustype(zgw, "ingetrokken"))
    await velsen.ingest_once()
    gateway = await net.gw.client("gemeente-velsen")
    approach = await gateway.approach(token_id)
    assert approach["revoked_at"] is not None
    (pseudonym,) = velsen.store.local_ids(token_id)
    later = net.gw.seal(
        None,
        sender="politie-ijmond",
        to=("halt",),
        token_id=token_id,
        token_hash_=approach["token_hash"],
        subjects=(pseudonym,),
    )
    with pytest.raises(RefusedError) as refused:
        await (await net.gw.client("politie-ijmond")).submit(later)
    assert refused.value.reason is Reason.TOKEN_REVOKED


async def test_beeindigd_sends_closure_then_revokes(net: Net, zgw: FakeZgw) -> None:
    velsen, zaak, token_id = await started(net, zgw, participants="halt")
    halt = await net.adapter("halt")
    await halt.receive_once()
    net.gw.clock.advance(60)
    zgw.set_status(zaak["url"], statustype(zgw, "beeindigd"), toelichting="Doelen bereikt.")
    await velsen.ingest_once()
    assert len((await velsen.send_once()).accepted) == 1
    gateway = await net.gw.client("gemeente-velsen")
    # Not yet, on the next polls either: revoking now would purge the closure before halt
    # has it.
    await velsen.ingest_once()
    await velsen.receive_once()
    assert (await gateway.approach(token_id))["revoked_at"] is None
    assert len((await halt.receive_once()).applied) == 1
    closure = next(c.body for c in net.system("halt").cases.values() if isinstance(c.body, Closure))
    assert closure.summary == "Doelen bereikt."
    await velsen.receive_once()  # halt's delivery receipt comes back as a sender event
    await velsen.ingest_once()
    assert (await gateway.approach(token_id))["revoked_at"] is not None


async def test_malformed_zaak_goes_to_the_failed_place_with_a_report(
    net: Net, zgw: FakeZgw
) -> None:
    velsen = await coordinator(net, zgw)
    youth = {k: v for k, v in YOUTH.items() if k != "geboortedatum"}
    zaak = new_zaak(net, zgw, participants="politie-ijmond,nobody", youth=youth)
    zgw.set_status(zaak["url"], statustype(zgw, "gestart"))
    await velsen.ingest_once()
    (failed,) = velsen.store.failed()
    assert "ZAAK-VLS-2026-0042" in failed.report
    assert "aanpak_deelnemers: 'nobody' is not a covenant partner" in failed.report
    assert "geboortedatum" in failed.report
    assert "Vries" not in failed.report
    assert BSN_A not in failed.report
    assert velsen.store.outbox() == []
    assert token_ids(zgw, zaak) == []
    assert velsen.metrics.value("failed_records_total") == 1
    # The case worker sees the report on the zaak.
    ((eio, content),) = zgw.informatieobjecten(zaak["url"])
    assert eio["titel"] == "Ketenpost: zaakgegevens niet verwerkt"
    assert json.loads(content)["ketenpost_fout"]["rapport"] == failed.report
    # The cursor moved on: the event is not read again.
    await velsen.ingest_once()
    assert len(velsen.store.failed()) == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"bronorganisatie": "123456789"}, "bronorganisatie"),
        ({"secret": "inline"}, "secret"),
        ({"vertrouwelijkheidaanduiding": "topgeheim"}, "vertrouwelijkheidaanduiding"),
        ({"zaken_api": "ftp://example"}, "zaken_api"),
        ({"statustype_plan": None}, "statustype_plan"),
        ({"poll_interval_s": -1}, "poll_interval_s"),
        ({"secret_file": "missing.secret"}, "secret_file"),
    ],
)
def test_config_errors_name_the_key(
    net: Net, zgw: FakeZgw, override: dict[str, Any], key: str
) -> None:
    folder = net.folder("gemeente-velsen")
    (folder / "zgw.secret").write_bytes(SECRET)
    table = {k: v for k, v in system_table(zgw, **override).items() if v is not None}
    config = msgspec.structs.replace(load_partner_dir(folder), system=table)
    with pytest.raises(AdapterConfigError) as error:
        create_transport(config, SystemClock())
    assert key in str(error.value)
    assert "\n" not in str(error.value)


# -- the fake conforms to the specifications -------------------------------------------------


def _validator(api: str, path: str, method: str, status: str) -> OAS30ReadValidator:
    spec = yaml.safe_load((SPECS / f"{api}-api.openapi.yaml").read_text(encoding="utf-8"))
    content = spec["paths"][path][method]["responses"][status]["content"]
    schema = next(iter(content.values()))["schema"]
    return OAS30ReadValidator({**schema, "components": spec["components"]})


async def test_fake_answers_conform_to_the_zgw_specifications(net: Net, zgw: FakeZgw) -> None:
    clock = net.gw.clock
    credentials = ZgwCredentials(CLIENT_ID, SECRET, "tester", "Tester")
    zaak = new_zaak(net, zgw)
    new_zaak(net, zgw)
    new_zaak(net, zgw)  # three zaken, two a page: `next` is followed
    status = zgw.set_status(zaak["url"], statustype(zgw, "gestart"))
    zaaktype = zgw.catalogi("zaaktypen", "jeugdaanpak")
    checks: list[tuple[str, str, str, str, Any]] = []
    async with ZgwClient(zgw.zaken_api, zgw.documenten_api, credentials, clock) as client:
        z, d = zgw.zaken_api, zgw.documenten_api
        page = await client.request("GET", f"{z}/zaken", params={"zaaktype": zaaktype}, crs=True)
        assert page["count"] == 3
        assert page["next"]
        assert page["previous"] is None
        checks.append(("zaken", "/zaken", "get", "200", page))
        assert len(await client.zaken(zaaktype)) == 3
        created = await client.create_zaak(
            {
                "bronorganisatie": RSIN,
                "verantwoordelijkeOrganisatie": RSIN,
                "zaaktype": zaaktype,
                "startdatum": today(net),
                "kenmerken": [{"kenmerk": "a" * 32, "bron": KENMERK_BRON}],
            }
        )
        checks.append(("zaken", "/zaken", "post", "201", created))
        patched = await client.patch_zaak(
            created["url"], {"kenmerken": [*created["kenmerken"], {"kenmerk": "b", "bron": "x"}]}
        )
        checks.append(("zaken", "/zaken/{uuid}", "patch", "200", patched))
        checks.append(("zaken", "/zaken/{uuid}", "get", "200", await client.zaak(zaak["url"])))
        statussen = await client.request("GET", f"{z}/statussen", params={"zaak": zaak["url"]})
        assert statussen["results"] == [status]
        checks.append(("zaken", "/statussen", "get", "200", statussen))
        rollen = await client.request("GET", f"{z}/rollen", params={"zaak": zaak["url"]})
        checks.append(("zaken", "/rollen", "get", "200", rollen))
        eigenschappen = await client.zaakeigenschappen(zaak["url"])
        checks.append(
            ("zaken", "/zaken/{zaak_uuid}/zaakeigenschappen", "get", "200", eigenschappen)
        )
        eio = await client.create_informatieobject(
            {
                "identificatie": "KP-test",
                "bronorganisatie": RSIN,
                "creatiedatum": today(net),
                "titel": "Test",
                "auteur": "cjg",
                "taal": "nld",
                "informatieobjecttype": zgw.catalogi("informatieobjecttypen", "x"),
                "vertrouwelijkheidaanduiding": "vertrouwelijk",
            },
            b"{}",
        )
        checks.append(("documenten", "/enkelvoudiginformatieobjecten", "post", "201", eio))
        found = await client.request(
            "GET", f"{d}/enkelvoudiginformatieobjecten", params={"identificatie": "KP-test"}
        )
        checks.append(("documenten", "/enkelvoudiginformatieobjecten", "get", "200", found))
        zio = await client.relate(zaak["url"], eio["url"], "Test")
        checks.append(("zaken", "/zaakinformatieobjecten", "post", "201", zio))
        listed = await client.zaakinformatieobjecten(zaak["url"], eio["url"])
        assert listed == [zio]
        checks.append(("zaken", "/zaakinformatieobjecten", "get", "200", listed))
        # Errors: a missing required field, a missing Accept-Crs, no or a forged JWT.
        with pytest.raises(ZgwRefusedError) as bad:
            await client.request("POST", f"{z}/zaakinformatieobjecten", body={"zaak": zaak["url"]})
        assert bad.value.status == 400
        with pytest.raises(ZgwRefusedError) as precondition:
            await client.request("GET", f"{z}/zaken")
        assert precondition.value.status == 412
    async with ZgwClient(
        zgw.zaken_api, zgw.documenten_api, ZgwCredentials(CLIENT_ID, b"x" * 48, "t", "T"), clock
    ) as forged:
        with pytest.raises(ZgwRefusedError) as unauthorized:
            await forged.statussen(zaak["url"])
        assert unauthorized.value.status == 401
    for api, path, method, status_code, document in checks:
        _validator(api, path, method, status_code).validate(document)


async def test_fake_error_documents_conform(net: Net, zgw: FakeZgw) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{zgw.zaken_api}/statussen") as response:
            assert response.status == 401
            assert response.headers["API-version"]
            _validator("zaken", "/statussen", "get", "401").validate(await response.json())
        credentials = ZgwCredentials(CLIENT_ID, SECRET, "t", "T")
        from adapters.partners._zgw_client import zgw_jwt

        headers = {"Authorization": f"Bearer {zgw_jwt(credentials, net.gw.clock.now())}"}
        async with session.post(
            f"{zgw.zaken_api}/statussen", json={"zaak": "x"}, headers=headers
        ) as response:
            assert response.status == 400
            _validator("zaken", "/statussen", "post", "400").validate(await response.json())


def test_message_types_of_the_default_policy_cover_the_zaak_events() -> None:
    # The coordinator sends these from zaak events; the covenant's default policy lets a
    # municipality send each to every role (the token narrows per approach).
    from gateway.protocol.policy import default_policy
    from gateway.protocol.types import ApproachKind
    from keys import Role

    policy = default_policy()
    for kind in ApproachKind:
        for role in Role:
            allowed = set(policy.rules[kind][Role.MUNICIPALITY][role])
            assert {
                MessageType.APPROACH_NOTICE,
                MessageType.CASE_CONFERENCE,
                MessageType.ACTION_PLAN,
                MessageType.CLOSURE,
            } <= allowed
