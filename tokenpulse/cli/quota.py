"""`tokenpulse quota`: manage quota definitions on tokenpulse.quotas.v1.

Definitions live on the compacted quotas topic (key tenant|quota_id, a
tombstone deletes); every worker follows the topic, so changes apply
without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tomllib
import uuid
from pathlib import Path
from typing import Any

from tokenpulse.cli._common import add_format, add_parser, write_json
from tokenpulse.errors import ConfigError


def register(subparsers: Any) -> None:
    p = add_parser(
        subparsers,
        "quota",
        help="quota definitions: set, list, delete, load (no restart)",
        description="Quota definitions live on the compacted topic tokenpulse.quotas.v1 (with "
        "TOKENPULSE_TOPIC_PREFIX/SUFFIX); every worker follows it, so a change applies within "
        "seconds. A quota limits input, output or total tokens of a tenant (and its "
        "sub-tenants: acme covers acme/research) per minute, hour, day or month; alerts go out "
        "at each threshold.",
        example_lines=_EXAMPLES,
    )
    sub = p.add_subparsers(dest="quota_cmd", metavar="ACTION", required=True)
    s = add_parser(
        sub,
        "set",
        help="create or replace a quota; prints its id",
        description="Create a quota, or replace the one with the same --id.",
        example_lines=(_EXAMPLES[0], _EXAMPLES[1]),
    )
    s.add_argument("--tenant", required=True, help="tenant id, e.g. acme or acme/research")
    s.add_argument("--metric", choices=("input", "output", "total"), default="total")
    s.add_argument("--period", choices=("minute", "hour", "day", "month"), default="day")
    s.add_argument("--limit", type=int, required=True, help="tokens per period")
    s.add_argument("--model", default=None, help="only this model (default: all models)")
    s.add_argument(
        "--thresholds", default="50,80,100", help="alert percentages (default 50,80,100)"
    )
    s.add_argument("--hard", action="store_true", help="the edge blocks once exceeded")
    s.add_argument("--timezone", default="UTC", help="where periods start (IANA name)")
    s.add_argument("--id", dest="quota_id", default=None, help="quota id (default: generated)")
    s.set_defaults(func=_set)
    ls = add_parser(
        sub,
        "list",
        help="list current quotas",
        description="Read the quotas topic to its end and print the current definitions.",
        example_lines=(_EXAMPLES[2], "tokenpulse quota list"),
    )
    add_format(ls)
    ls.set_defaults(func=_list)
    d = add_parser(
        sub,
        "delete",
        help="delete a quota by id",
        description="Write a tombstone for the quota; exit 1 when no quota has that id.",
        example_lines=(_EXAMPLES[4],),
    )
    d.add_argument("quota_id", help="the id `quota set` printed or `quota list` shows")
    d.set_defaults(func=_delete)
    ld = add_parser(
        sub,
        "load",
        help="load [[quota]] tables from a TOML file (all or nothing)",
        description="Validate every [[quota]] table of the file, then publish them all; loading "
        "the same file twice replaces rather than adds. The format is documented in "
        "examples/quotas.toml.",
        example_lines=(_EXAMPLES[3],),
    )
    ld.add_argument("file", type=Path, help="TOML file with [[quota]] tables")
    ld.set_defaults(func=_load)


_EXAMPLES = (
    "tokenpulse quota set --tenant acme/research --metric total --period day --limit 1000000 "
    "--id research-daily",
    "tokenpulse quota set --tenant acme --period hour --limit 5000000 --thresholds 80,100 --hard",
    "tokenpulse quota list --format json",
    "tokenpulse quota load examples/quotas.toml",
    "tokenpulse quota delete research-daily",
)


def _settings() -> Any:
    from tokenpulse.streams.settings import WorkerSettings

    return WorkerSettings.from_env()


async def _publish(items: list[tuple[bytes, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    from tokenpulse.streams.topics import ensure_topics

    settings = _settings()
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(settings.topics.quotas, value, key=key)
    finally:
        await producer.stop()


async def _current() -> dict[bytes, Any]:
    from tokenpulse.streams.quota_feed import QuotaFeed
    from tokenpulse.streams.quotas import QuotaEngine
    from tokenpulse.streams.topics import ensure_topics

    settings = _settings()
    await ensure_topics(settings)
    engine = QuotaEngine(None, alerts_topic="", state_topic="")  # type: ignore[arg-type]
    feed = QuotaFeed(
        engine,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        quotas_topic=settings.topics.quotas,
        state_topic=settings.topics.state,
    )
    await feed.start()
    await feed.stop()
    return dict(engine.definitions)


def _definition(raw: dict[str, Any]) -> tuple[bytes, bytes]:
    import msgspec

    from tokenpulse.schemas import QuotaDefinition, encode_quota_definition, quota_state_key

    raw = dict(raw)
    raw.setdefault("quota_id", f"q-{uuid.uuid4().hex[:12]}")
    try:
        q = msgspec.convert(raw, QuotaDefinition)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid quota definition: {exc}") from None
    return quota_state_key(q.tenant_id, q.quota_id), encode_quota_definition(q)


def _set(args: argparse.Namespace) -> int:
    try:
        thresholds = tuple(int(t) for t in args.thresholds.split(",") if t.strip())
    except ValueError:
        raise ConfigError(
            f"--thresholds must be integers like 50,80,100, got {args.thresholds!r}"
        ) from None
    raw = {
        "tenant_id": args.tenant,
        "metric": args.metric,
        "period": args.period,
        "limit": args.limit,
        "model": args.model,
        "thresholds_pct": thresholds,
        "hard": args.hard,
        "timezone": args.timezone,
    }
    if args.quota_id:
        raw["quota_id"] = args.quota_id
    key, value = _definition(raw)
    asyncio.run(_publish([(key, value)]))
    print(key.decode().split("|", 1)[1])
    return 0


def _list(args: argparse.Namespace) -> int:
    import msgspec

    defs = asyncio.run(_current())
    if args.format == "json":
        write_json(msgspec.to_builtins(list(defs.values())))
        return 0
    for q in defs.values():
        print(
            f"{q.quota_id}\t{q.tenant_id}\t{q.metric}/{q.period}\t{q.limit}\t"
            f"model={q.model or '*'}\t"
            f"{','.join(map(str, q.thresholds_pct))}\t{'hard' if q.hard else 'soft'}\t{q.timezone}"
        )
    return 0


def _delete(args: argparse.Namespace) -> int:
    defs = asyncio.run(_current())
    keys = [k for k, q in defs.items() if q.quota_id == args.quota_id]
    if not keys:
        raise ConfigError(f"no quota with id {args.quota_id!r}; see `tokenpulse quota list`")
    asyncio.run(_publish([(k, None) for k in keys]))
    return 0


def parse_quota_file(path: Path) -> list[tuple[bytes, bytes]]:
    """(key, value) records of the `[[quota]]` tables of a TOML file (see examples/quotas.toml).

    A table without `quota_id` gets one derived from tenant, metric, period
    and model, so loading the same file twice replaces rather than adds.
    Unknown keys and float money are refused: a typo must not silently drop
    a threshold, and cost limits are exact decimal strings.
    """
    from tokenpulse.schemas import QuotaDefinition

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    tables = data.get("quota", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path} has no [[quota]] tables; see examples/quotas.toml")
    allowed = set(QuotaDefinition.__struct_fields__)
    items: list[tuple[bytes, bytes]] = []
    for n, raw in enumerate(tables, start=1):
        where = f"{path}: quota #{n}"
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        if isinstance(raw.get("limit"), float):
            raise ConfigError(
                f"{where}: limit {raw['limit']!r} is a float; write token limits as integers "
                'and cost limits as decimal strings, e.g. limit = "250.00"'
            )
        raw = dict(raw)
        if "quota_id" not in raw:
            raw["quota_id"] = _derived_id(raw)
        try:
            items.append(_definition(raw))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    keys = [k for k, _ in items]
    dupes = sorted({k.decode() for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"{path}: the same quota appears twice: {', '.join(dupes)}")
    return items


def _derived_id(raw: dict[str, Any]) -> str:
    material = "|".join(
        str(raw.get(k) or "") for k in ("tenant_id", "metric", "period", "model", "currency")
    )
    return "q-" + hashlib.sha256(material.encode()).hexdigest()[:12]


def _load(args: argparse.Namespace) -> int:
    items = parse_quota_file(args.file)
    asyncio.run(_publish(list(items)))
    print(f"loaded {len(items)} quotas")
    return 0
