"""``ketenpost adapter run PARTNER --config DIR/partners/PARTNER/adapter.toml``.

Rules kept here (house rule 10): data to stdout, ``ketenpost: error: <one line>`` to stderr;
exit 0 after a clean stop (Ctrl-C / SIGTERM), 2 for a bad configuration, 1 for anything else
that stops the adapter. The transport comes from the ``[system]`` table via
``adapters.registry``; the command is thin and the work is in ``adapters.engine``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Final

from adapters import cli_processing_log
from adapters.base import SystemClock
from adapters.config import AdapterConfig, load_adapter_config
from adapters.engine import Adapter, EngineSettings
from adapters.errors import AdapterConfigError, AdapterError
from adapters.registry import TransportRegistry, default_registry
from keys import KeysError

PROG: Final = "ketenpost"
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2

USAGE_EXAMPLES: Final = """\
examples:
  ketenpost adapter run halt --config covenant/partners/halt/adapter.toml
  ketenpost adapter run halt --config covenant/partners/halt/adapter.toml \\
      --metrics-listen 127.0.0.1:9464
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    adapter = subparsers.add_parser("adapter", help="run a partner's adapter")
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
    cli_processing_log.register(verbs)


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


def run_adapter(args: argparse.Namespace, registry: TransportRegistry | None = None) -> int:
    try:
        config = load_for(args.partner, args.config)
        clock = SystemClock()
        transport = (registry or default_registry()).create(config, clock)
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
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_run(adapter))
    except (AdapterError, KeysError, OSError) as exc:
        return _error(exc, EXIT_FAILED)
    return 0
