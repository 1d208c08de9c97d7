"""``ketenpost adapter run PARTNER --config DIR/partners/PARTNER/adapter.toml`` and
``ketenpost adapter configure --partner-dir DIR --gateway URL``.

Rules kept here (house rule 10): data to stdout, ``ketenpost: error: <one line>`` to stderr;
exit 0 after a clean stop (Ctrl-C / SIGTERM), 2 for a bad configuration, 1 for anything else
that stops the adapter. The transport comes from the ``[system]`` table via
``adapters.registry``; the command is thin and the work is in ``adapters.engine``. ``run``
logs JSON lines to stderr as the gateway does (``gateway.logs``, with the adapter's fields
``ADAPTER_LOG_FIELDS`` allowed too).

``configure`` writes ``adapter.toml`` for a partner folder made with ``ketenpost keys
generate`` (and completed by the onboarding runbook), with ``adapters.config.
render_adapter_toml`` — the same text ``ketenpost init`` writes for the same files. It takes
everything from the folder (the partner id from its public bundle, the key files present),
refuses with exit 2 when a file the adapter needs is missing, when the URL is not ``https://``,
or when ``adapter.toml`` exists without ``--force``; it never overwrites silently, and never
leaves a file that ``load_partner_dir`` refuses. It prints paths and ids only, never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec

from adapters import cli_failed, cli_processing_log
from adapters.base import SystemClock
from adapters.config import (
    ADAPTER_TOML,
    AdapterConfig,
    key_family,
    load_adapter_config,
    load_partner_dir,
    render_adapter_toml,
)
from adapters.engine import Adapter, EngineSettings
from adapters.errors import AdapterConfigError, AdapterError
from adapters.registry import TransportRegistry, default_registry
from gateway.config import LogLevel
from gateway.logs import JsonLineFormatter, configure_logging
from keys import KeysError
from keys.cli import PARTNER_BUNDLE_FORMAT, PartnerBundle
from keys.directory import PARTNER_ID_PATTERN
from keys.keyfile import KeyFileV1, PassphraseKind, PassphraseSource, SealedSecret

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2

USAGE_EXAMPLES: Final = """\
examples:
  ketenpost adapter run halt --config covenant/partners/halt/adapter.toml
  ketenpost adapter run halt --config covenant/partners/halt/adapter.toml \\
      --metrics-listen 127.0.0.1:9464
"""

CONFIGURE_EXAMPLES: Final = """\
examples:
  ketenpost adapter configure --partner-dir ./welzijn-velsen \\
      --gateway https://ketenpost.ijmond.example:8443
  ketenpost adapter configure --partner-dir ./welzijn-velsen \\
      --gateway https://ketenpost.ijmond.example:8443 \\
      --trust-anchor ./welzijn-velsen/trust/pkio-private-root.crt --force

Writes DIR/adapter.toml from what is in DIR: the partner id from <id>.public.json (or the
folder's name), keys/sign.key, every keys/encrypt*.key, keys/outbox.key, keys/tls.crt and
keys/tls.key, keys/token.key for a coordinator, trust/ca.crt, directory/ and
directory/root.json. Key files sealed by `keys generate --passphrase` need --passphrase
with the same source (a file relative to DIR, or env:NAME). Prints what it wrote as JSON
(paths and ids, no secrets). Add the [system] table of your partner system's transport
before `ketenpost adapter run`.
"""

# What each file the adapter needs is, and where it comes from: a refusal names the file and
# says how to get it.
_NEEDED: Final = {
    "keys/sign.key": "made by `ketenpost keys generate`",
    "keys/encrypt.key": "made by `ketenpost keys generate`",
    "keys/token.key": "the coordinator's token key, made by `keys generate --coordinator`",
    "keys/outbox.key": "made by `ketenpost keys generate`",
    "keys/tls.key": "made by `ketenpost keys generate`",
    "keys/tls.crt": "the certificate the CA issues for keys/tls.csr (`keys certify`)",
    "directory": "a first copy of the directory bundle",
    "directory/root.json": "the trusted root, checked with the officers out of band",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    adapter = subparsers.add_parser("adapter", help="run or configure a partner's adapter")
    verbs = adapter.add_subparsers(dest="adapter_command", required=True, metavar="VERB")
    run = verbs.add_parser(
        "run",
        help="run the adapter of one partner until stopped",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("partner", metavar="PARTNER", help="the partner id, e.g. halt")
    run.add_argument("--config", required=True, type=Path, metavar="FILE")
    run.add_argument(
        "--metrics-listen",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="plain-HTTP /metrics and /healthz (default %(default)s; '' for none)",
    )
    run.set_defaults(handler=run_adapter)
    configure = verbs.add_parser(
        "configure",
        help="write adapter.toml for a partner folder made with `keys generate`",
        description="Write DIR/adapter.toml for a partner folder made with `keys generate`.",
        epilog=CONFIGURE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure.add_argument(
        "--partner-dir", required=True, type=Path, metavar="DIR", help="the partner's folder"
    )
    configure.add_argument(
        "--gateway", required=True, metavar="URL", help="the gateway's partner URL (https://)"
    )
    configure.add_argument(
        "--trust-anchor",
        action="append",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) the gateway's chain must verify to (default DIR/trust/ca.crt)",
    )
    configure.add_argument(
        "--passphrase",
        metavar="SOURCE",
        help="where the key files' passphrase comes from: file:PATH (relative to DIR) or env:NAME",
    )
    configure.add_argument(
        "--force", action="store_true", help="replace an existing adapter.toml (all of it)"
    )
    configure.set_defaults(handler=configure_adapter)
    cli_processing_log.register(verbs)
    cli_failed.register(verbs)


def _error(message: object, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def load_for(partner: str, path: Path) -> AdapterConfig:
    config = load_adapter_config(path)
    if config.partner.id != partner:
        raise AdapterConfigError(f"{path} is the adapter of {config.partner.id}, not {partner}")
    return config


async def _run(adapter: Adapter) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with adapter:
        print(f"adapter {adapter.partner_id} running against {adapter.gateway_url}", flush=True)
        await adapter.run(stop)


# The adapter's own log fields (``adapters.engine``), on top of the gateway's allow-list
# (``gateway.logs.ALLOWED_FIELDS``): which key and certificate are in use and why one was
# skipped, alarm kinds, the step that failed, and the one-line detail of an error (the
# gateway's ``error``). Left off, so dropped and counted as the gateway drops token ids and
# pseudonyms: partner-system record ids and drop-folder file names (they may be case numbers
# or names), token ids, and quarantine reports (they quote the record).
ADAPTER_LOG_FIELDS: Final = frozenset(
    {
        "alarm",
        "certificate",
        "detail",
        "generation",
        "kid",
        "not_after",
        "step",
        "switched",
    }
)


def configure_adapter_logging(stream: TextIO | None = None) -> JsonLineFormatter:
    """Log as the gateway does (``gateway.logs``: one JSON object per line, an event name and
    the allowed ``extra=`` fields), with ``ADAPTER_LOG_FIELDS`` allowed too, at ``info``, to
    ``stream`` (stderr: stdout carries what the command prints). Returns the formatter."""
    return configure_logging(
        LogLevel.INFO,
        stream if stream is not None else sys.stderr,
        extra_fields=ADAPTER_LOG_FIELDS,
    )


def run_adapter(args: argparse.Namespace, registry: TransportRegistry | None = None) -> int:
    try:
        config = load_for(args.partner, args.config)
        clock = SystemClock()
        if registry is None:
            # Logging before the registry collects installed transports, so a warning of it
            # (``transport_entry_point_ignored``) is a full JSON line with its detail.
            configure_adapter_logging()
            registry = default_registry()
        transport = registry.create(config, clock)
        adapter = Adapter(
            config,
            transport,
            clock=clock,
            settings=EngineSettings(metrics_listen=args.metrics_listen or None),
        )
    except AdapterConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    except (AdapterError, KeysError) as exc:
        return _error(exc, EXIT_FAILED)
    configure_adapter_logging()
    try:
        asyncio.run(_run(adapter))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and args.metrics_listen:
            # The only address the adapter binds is its /metrics listener; 9464 is also the
            # gateway's default, so two processes on one machine meet here first.
            return _error(
                f"cannot listen on {args.metrics_listen} for /metrics and /healthz: the "
                "address is in use (choose another with --metrics-listen HOST:PORT, or '' "
                "for none)",
                EXIT_FAILED,
            )
        return _error(exc, EXIT_FAILED)
    except (AdapterError, KeysError) as exc:
        return _error(exc, EXIT_FAILED)
    return 0


# -- adapter configure -----------------------------------------------------------------------


def _partner_of(folder: Path) -> tuple[str, bool | None]:
    """The partner id and coordinator flag from the folder's public bundle (``<id>.public.json``,
    written by ``keys generate``); without one, the folder's name and ``None`` (not known)."""
    bundles: list[PartnerBundle] = []
    for path in sorted(folder.glob("*.public.json")):
        try:
            bundle = msgspec.json.decode(path.read_bytes(), type=PartnerBundle)
        except (OSError, msgspec.DecodeError) as exc:
            raise AdapterConfigError(f"{path}: not a {PARTNER_BUNDLE_FORMAT}: {exc}") from None
        if path.name != f"{bundle.id}.public.json":
            raise AdapterConfigError(f"{path} is the public bundle of {bundle.id}")
        bundles.append(bundle)
    if len(bundles) > 1:
        names = ", ".join(f"{b.id}.public.json" for b in bundles)
        raise AdapterConfigError(f"{folder} holds several public bundles ({names}); keep one")
    if bundles:
        return bundles[0].id, bundles[0].coordinator
    name = folder.resolve().name
    if re.match(PARTNER_ID_PATTERN, name) is None:
        raise AdapterConfigError(
            f"{folder} has no <id>.public.json and its name {name!r} is not a partner id"
        )
    return name, None


def _in_folder(folder: Path, path: Path) -> str:
    """``path`` as ``adapter.toml`` names it: relative to the folder when inside it, so the
    folder stays self-contained; absolute otherwise."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise AdapterConfigError(
            f"--gateway {url}: not an https:// URL (partners reach the gateway over mutual TLS)"
        )


def _write_new(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` only once it loads as an adapter configuration; with
    ``force`` replace an existing file atomically, without it refuse one (also one that
    appears meanwhile: the final step is a hard link, which never replaces)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        load_adapter_config(Path(tmp))
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AdapterConfigError(
                    f"{path} already exists; refusing to overwrite it (--force replaces it)"
                ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _passphrase_of(folder: Path, spec: str | None) -> str:
    """The ``[keys] passphrase`` to write: ``spec`` checked (a file named must exist), or
    ``""``. Refuses a folder whose key files are sealed when no ``spec`` is given, since the
    adapter could not open them."""
    if spec:
        try:
            source = PassphraseSource.parse(spec)
        except ValueError as exc:
            raise AdapterConfigError(f"--passphrase {spec}: {exc}") from None
        if source.kind is PassphraseKind.FILE and not (folder / source.where).is_file():
            raise AdapterConfigError(f"--passphrase {spec}: no such file in {folder}")
        return spec
    try:
        header = msgspec.json.decode((folder / "keys" / "sign.key").read_bytes(), type=KeyFileV1)
    except (OSError, msgspec.DecodeError):
        return ""  # a missing key file is named later; a malformed one by the adapter
    if isinstance(header.protection, SealedSecret):
        raise AdapterConfigError(
            f"{folder / 'keys' / 'sign.key'} is sealed with a passphrase: give --passphrase "
            "file:PATH or env:NAME"
        )
    return ""


def configure(
    folder: Path,
    *,
    gateway_url: str,
    trust_anchors: list[Path],
    force: bool,
    passphrase: str | None = None,
) -> dict[str, Any]:
    """Write ``folder/adapter.toml`` from the files in ``folder``; return what was written.

    Raises ``AdapterConfigError`` (one line) when the URL is not ``https://``, a file the
    adapter needs is missing (every missing one is named), the key files are sealed and no
    ``passphrase`` source is given, or ``adapter.toml`` exists and ``force`` is not set.
    Nothing is written then.
    """
    _check_url(gateway_url)
    if not folder.is_dir():
        raise AdapterConfigError(f"{folder}: no such partner folder")
    target = folder / ADAPTER_TOML
    if target.exists() and not force:
        raise AdapterConfigError(
            f"{target} already exists; refusing to overwrite it (--force replaces it)"
        )
    partner_id, coordinator = _partner_of(folder)
    if coordinator is None:
        coordinator = (folder / "keys" / "token.key").exists()
    needed = ["keys/sign.key", "keys/encrypt.key", "keys/outbox.key", "keys/tls.crt"]
    needed += ["keys/tls.key", *(["keys/token.key"] if coordinator else [])]
    needed += ["directory", "directory/root.json"]
    missing = [
        f"{name} ({_NEEDED[name]})"
        for name in needed
        if not ((folder / name).is_dir() if name == "directory" else (folder / name).is_file())
    ]
    anchors = [_in_folder(folder, a) for a in trust_anchors] or ["trust/ca.crt"]
    missing += [
        f"{a} (the trust anchor: the CA certificate the gateway's chain verifies to)"
        for a in anchors
        if not (folder / a).is_file()
    ]
    if missing:
        raise AdapterConfigError(f"{folder} lacks what the adapter needs: {'; '.join(missing)}")
    passphrase_source = _passphrase_of(folder, passphrase)
    encrypt = [
        _in_folder(folder, p) for p in key_family(folder / "keys" / "encrypt.key") if p.exists()
    ]
    text = render_adapter_toml(
        partner_id,
        gateway_url=gateway_url,
        coordinator=coordinator,
        encrypt=encrypt,
        trust_anchors=anchors,
        passphrase=passphrase_source,
    )
    replaced = target.exists()
    _write_new(target, text, force=force)
    config = load_partner_dir(folder)
    return {
        "adapter_toml": str(target),
        "replaced": replaced,
        "partner": config.partner.id,
        "coordinator": config.keys.token is not None,
        "gateway": config.gateway.url,
        "tls": msgspec.to_builtins(config.tls),
        "keys": {
            "sign": config.keys.sign,
            "encrypt": list(config.keys.encrypt),
            "token": config.keys.token,
            "outbox": config.keys.outbox,
            "passphrase": config.keys.passphrase or None,
        },
        "directory": {
            "bundle": config.directory.bundle,
            "trusted_root": config.directory.trusted_root,
        },
        "store": config.store.path,
    }


def configure_adapter(args: argparse.Namespace) -> int:
    try:
        written = configure(
            args.partner_dir,
            gateway_url=args.gateway,
            trust_anchors=list(args.trust_anchor or []),
            force=args.force,
            passphrase=args.passphrase,
        )
    except AdapterConfigError as exc:
        return _error(exc, EXIT_BAD_CONFIG)
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename or args.partner_dir}", EXIT_FAILED)
    print(json.dumps(written, indent=2))
    print(
        f"{PROG}: wrote {written['adapter_toml']} for {written['partner']}; add the [system] "
        "table of your partner system's transport before `ketenpost adapter run`",
        file=sys.stderr,
    )
    return 0
