"""The ``ketenpost`` command: the composition root (ADR 0002).

This is the only module that imports from all three packages. Each package owns its verbs and
registers them here; this module assembles the parser, wires ``init`` from one function of each
package, and maps errors to ``ketenpost: error: …`` and an exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from adapters import cli as adapter_cli
from adapters import cli_demo, cli_partner, cli_witness
from adapters.config import ADAPTER_TOML, render_adapter_toml
from adapters.registry import default_system_toml, write_development_secrets
from gateway import cli_bench, cli_config, cli_schema, cli_serve
from gateway.config import write_default_config
from gateway.protocol.policy import default_policy, encode_policy
from keys import KeysError
from keys import cli as keys_cli
from keys.deployment import DeploymentLayout, create_deployment

PROG = "ketenpost"
EXIT_ERROR = 1

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def init_deployment(target: Path, *, now: int, gateway_url: str = "") -> DeploymentLayout:
    """Create a complete development deployment of the IJmond covenant in ``target``.

    Keys, certificates and the signed directory come from ``keys``; the default covenant
    policy and ``gateway.toml`` from ``gateway``; each partner's ``adapter.toml`` (with the
    ``[system]`` table of its role's partner system) and the secrets its partner system shares
    with the adapter from ``adapters``. The returned layout lists those secrets too.
    """
    layout = create_deployment(target, policy=encode_policy(default_policy()), now=now)
    write_default_config(
        target / "gateway.toml",
        tls_cert="gateway/tls.crt",
        tls_key="gateway/tls.key",
        trust_anchors=["ca/ca.crt"],
        sign_key="gateway/sign.key",
        directory_bundle="directory",
        trusted_root="directory/root.json",
    )
    url = gateway_url or "https://127.0.0.1:8443"
    for partner in layout.partners:
        (partner.folder / ADAPTER_TOML).write_text(
            render_adapter_toml(
                partner.id,
                gateway_url=url,
                coordinator=partner.coordinator,
                system=default_system_toml(partner.role) if partner.role else "",
            ),
            encoding="utf-8",
        )
    system_secrets = write_development_secrets(
        [(p.role, p.folder) for p in layout.partners if p.role is not None]
    )
    layout = dataclasses.replace(layout, secrets=(*layout.secrets, *system_secrets))
    (target / "README.txt").write_text(_readme(layout), encoding="utf-8")
    return layout


def _readme(layout: DeploymentLayout) -> str:
    secrets = "\n".join(f"  {p.relative_to(layout.root)}" for p in layout.secrets)
    partners = "\n".join(
        f"  partners/{p.id}/{'  (coordinator: issues approach tokens)' if p.coordinator else ''}"
        for p in layout.partners
    )
    return (
        "Ketenpost development deployment (made by `ketenpost init`).\n\n"
        "FOR DEVELOPMENT AND TESTS ONLY: every private key of the covenant is in this folder.\n"
        "In production each partner makes its own keys (`ketenpost keys generate`), officers\n"
        "hold the root and directory keys offline, and the key authority the timestamp key.\n\n"
        "  gateway.toml        the gateway's configuration (`ketenpost serve --config`)\n"
        "  ca/ca.crt           the covenant CA certificate (the trust anchor)\n"
        "  directory/          the signed key directory (TUF metadata) and its trusted root\n"
        "  gateway/            the gateway's sign key and TLS key and certificate\n"
        "  officers/           root and directory signing keys (threshold 2 of 3)\n"
        "  key-authority/      the timestamp key\n\n"
        "One self-contained folder per partner (deploy a partner by copying its folder):\n"
        f"{partners}\n\n"
        "Each adapter.toml has a [system] table for its partner system's development fake\n"
        "(adapters/testing/): ZGW APIs for the municipalities, REST for the police and the CJG,\n"
        "XML and CSV drop folders for the OM and Halt, SQL tables for welfare.\n"
        "The four municipalities share the fake ZGW's development client credentials: one\n"
        "client_id and the same secret in every partners/gemeente-*/zgw.secret. In production\n"
        "each municipality's own zaaksysteem issues its own.\n\n"
        "Secret files (mode 0600; key folders 0700):\n"
        f"{secrets}\n\n"
        "See it all run: `ketenpost demo` (or `make demo`) plays the covenant's scenario in a\n"
        "fresh deployment of its own; `ketenpost demo --without PARTNER` is a sandbox in which\n"
        "you run that partner's adapter yourself.\n\n"
        "Run this deployment by hand (from this folder):\n"
        "  ketenpost store migrate --config gateway.toml   # once, before the first serve\n"
        "  ketenpost serve --config gateway.toml\n"
        "  ketenpost adapter run halt --config partners/halt/adapter.toml \\\n"
        "      --metrics-listen 127.0.0.1:9465             # 9464 is the gateway's\n"
        "Each adapter needs its partner system (the [system] table of its adapter.toml).\n"
    )


def _cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    layout = init_deployment(target, now=int(time.time()), gateway_url=args.gateway_url)
    summary = {
        "deployment": str(layout.root),
        "gateway_config": str(layout.root / "gateway.toml"),
        "ca_certificate": str(layout.ca_certificate),
        "directory": str(layout.directory),
        "partners": {p.id: str(p.folder) for p in layout.partners},
        "coordinators": [p.id for p in layout.partners if p.coordinator],
        "secrets": [str(p) for p in layout.secrets],
    }
    print(json.dumps(summary, indent=2))
    print(
        f"{PROG}: made a development deployment in {layout.root}; "
        f"{len(layout.secrets)} secret files (see {layout.root / 'README.txt'})",
        file=sys.stderr,
    )
    return 0


def _register_init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init",
        help="create a development deployment of the IJmond covenant",
        description=(
            "Create keys, certificates, the signed directory, gateway.toml and one "
            "self-contained folder per partner. For development and tests only."
        ),
        epilog="example: ketenpost init ./dev-covenant",
    )
    p.add_argument("dir", help="an empty or new folder")
    p.add_argument(
        "--gateway-url", default="", help="the gateway URL written into each adapter.toml"
    )
    p.set_defaults(handler=_cmd_init)


REGISTRARS: tuple[Register, ...] = (
    _register_init,
    cli_config.register,
    cli_schema.register,
    cli_serve.register,
    # `ketenpost audit witness` joins the audit group that cli_serve registers.
    cli_witness.register,
    cli_bench.register,
    cli_partner.register,
    adapter_cli.register,
    functools.partial(cli_demo.register, init=init_deployment),
    keys_cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ketenpost: the covenant's secure case-message gateway.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeysError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
