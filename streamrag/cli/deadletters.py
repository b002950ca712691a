"""`streamrag dead-letters list|show|redrive`: what failed, why, and sending it again after
a fix (streamrag.deadletters holds the rules; these commands parse and print)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from streamrag import deadletters as dl
from streamrag.cli.context import settings_of
from streamrag.config import Settings
from streamrag.errors import UserError
from streamrag.records import Origin
from streamrag.runstats import source_topics

app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, re-drive after a fix.")

Reason = Annotated[
    str | None,
    typer.Option("--reason", "-r", help="Text in the reason or the error class (any case)."),
]
Stage = Annotated[str | None, typer.Option(help="Only this stage: normalize, chunk, embed, index.")]
Since = Annotated[
    str | None,
    typer.Option(
        help="Dead-lettered since: a duration back from now (30m, 2h, 1d) or an ISO time"
        " (local unless it has an offset)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per dead letter.")]


def selection_of(reason: str | None, stage: str | None, since: str | None) -> dl.Selection:
    try:
        since_ms = None if since is None else dl.parse_since(since)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from None
    return dl.Selection(reason, stage, since_ms)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    reason: Reason = None,
    stage: Stage = None,
    since: Since = None,
    last: Annotated[int | None, typer.Option(min=1, help="Only the newest N shown.")] = None,
    as_json: AsJson = False,
) -> None:
    """The dead letters, oldest first, with how many there are of each reason."""
    selection = selection_of(reason, stage, since)
    settings = settings_of(ctx)
    entries, unreadable = dl.read_entries(settings)
    chosen = [e for e in entries if selection.matches(e)]
    shown = chosen[-last:] if last else chosen
    if as_json:
        for e in shown:
            typer.echo(json.dumps(entry_json(e), ensure_ascii=False))
        return
    for line in table(shown):
        typer.echo(line)
    for line in footer(settings, selection, entries, chosen, len(shown)):
        typer.echo(line)
    for line in unreadable:
        typer.echo(f"warning: {line}", err=True)


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    address: Annotated[
        str, typer.Argument(help="P:O in the dead-letter topic (as `list` shows) or TOPIC/P/O.")
    ],
    as_json: AsJson = False,
) -> None:
    """One dead letter in full, and what `redrive` would do with it."""
    try:
        at = dl.parse_address(address)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="ADDRESS") from None
    settings = settings_of(ctx)
    topic = settings.kafka.dead_letter_topic
    if isinstance(at, Origin):
        found = [e for e in dl.read_entries(settings)[0] if e.letter.origin == at]
    else:
        entry = dl.read_entry(settings, at)
        found = [] if entry is None else [entry]
    if not found:
        raise UserError(f"no dead letter at {address} in {topic}")
    scan = dl.scan_sources(settings, [e.letter.origin for e in found if e.letter.origin])
    decisions = dl.plan_redrive(found, scan, set(source_topics(settings)))
    for i, d in enumerate(decisions):
        if as_json:
            shown = {**entry_json(d.entry), "redrive": verdict(d)}
            typer.echo(json.dumps(shown, ensure_ascii=False))
            continue
        typer.echo(("\n" if i else "") + "\n".join(details(d, topic)))


@app.command("redrive")
def redrive_cmd(
    ctx: typer.Context,
    reason: Reason = None,
    stage: Stage = None,
    since: Since = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what, send nothing.")] = False,
) -> None:
    """After a fix, send the chosen dead letters' records back to their source topic.

    Records superseded since (a newer record of their key, or a re-drive) are skipped."""
    selection = selection_of(reason, stage, since)
    if selection.everything and not everything:
        raise UserError("say which dead letters to re-drive: --reason, --stage, --since or --all")
    settings = settings_of(ctx)
    chosen = [e for e in dl.read_entries(settings)[0] if selection.matches(e)]
    if not chosen:
        typer.echo(f"no dead letter in {settings.kafka.dead_letter_topic} matches: nothing to do")
        return
    scan = dl.scan_sources(settings, [e.letter.origin for e in chosen if e.letter.origin])
    decisions = dl.plan_redrive(chosen, scan, set(source_topics(settings)))
    sending = [d for d in decisions if d.record is not None]
    sent = 0 if dry_run else dl.send_records(settings, sending)
    for d in decisions:
        typer.echo(redrive_line(d, dry_run))
    skipped = len(decisions) - len(sending)
    if dry_run:
        typer.echo(f"dry run: would send {len(sending)}, skip {skipped}; nothing sent")
    elif sent == 0:
        typer.echo(f"nothing sent, skipped {skipped}")
    else:
        typer.echo(
            f"sent {sent}, skipped {skipped}: the pipeline reads what was sent like new records;"
            " what fails again is dead-lettered again, with its new reason"
        )


# Output ----------------------------------------------------------------------------------


def local_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def clip(text: str | None, width: int) -> str:
    """One line of at most ``width`` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def origin_text(origin: Origin | None) -> str:
    return "-" if origin is None else dl.where(origin)


def table(entries: Sequence[dl.Entry]) -> list[str]:
    if not entries:
        return []
    rows = [
        (
            local_time(e.timestamp_ms),
            e.address,
            e.letter.stage,
            e.letter.error,
            origin_text(e.letter.origin),
            clip(e.letter.key, 24),
        )
        for e in entries
    ]
    heads = ("TIME", "AT", "STAGE", "ERROR", "ORIGIN", "KEY")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    used = sum(widths) + 2 * len(widths)
    reason_width = max(30, shutil.get_terminal_size((160, 24)).columns - used)

    def line(cells: Sequence[str], reason: str) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + reason

    out = [line(heads, "REASON")]
    out += [
        line(r, clip(e.letter.reason, reason_width)) for r, e in zip(rows, entries, strict=True)
    ]
    return out


def footer(
    settings: Settings,
    selection: dl.Selection,
    entries: Sequence[dl.Entry],
    chosen: Sequence[dl.Entry],
    shown: int,
) -> list[str]:
    topic = settings.kafka.dead_letter_topic
    if not entries:
        return [f"no dead letters in {topic}"]
    if not chosen:
        out = [f"no dead letter matches (of {len(entries)} in {topic})"]
        stages = sorted({e.letter.stage for e in entries})
        if selection.stage and selection.stage.casefold() not in stages:
            out.append(f"stages with dead letters: {', '.join(stages)}")
        return out
    counted = f"{len(chosen)} dead letter{'s' * (len(chosen) != 1)}"
    of = f" of {len(entries)}" if len(chosen) != len(entries) else ""
    newest = f", the newest {shown} shown" if shown != len(chosen) else ""
    out = ["", f"{counted}{of} in {topic}{newest}, by reason:"]
    for (stage, error, reason), n in dl.reason_counts(chosen).most_common():
        out.append(f"{n:>6}  {stage:<9} {error:<16} {clip(reason, 100)}")
    return out


def entry_json(e: dl.Entry) -> dict[str, Any]:
    o = e.letter.origin
    return {
        "at": e.address,
        "time": datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).isoformat(),
        "stage": e.letter.stage,
        "error": e.letter.error,
        "reason": e.letter.reason,
        "origin": None
        if o is None
        else {"topic": o.topic, "partition": o.partition, "offset": o.offset},
        "key": e.letter.key,
        "value": e.letter.value,
    }


def verdict(d: dl.Decision) -> str:
    if d.record is None:
        return f"skip: {d.why}"
    size = len(d.record.value or b"")
    return f"send {dl.where(d.record)} ({size} bytes, its key {clip(key_text(d.record.key), 40)})"


def key_text(key: bytes | None) -> str:
    return "null" if key is None else key.decode("utf-8", "replace")


def details(d: dl.Decision, topic: str) -> list[str]:
    e, letter = d.entry, d.entry.letter
    value = letter.value
    return [
        f"dead letter  {e.address} in {topic}, {local_time(e.timestamp_ms)}",
        f"stage        {letter.stage}",
        f"error        {letter.error}",
        f"reason       {letter.reason}",
        f"origin       {origin_text(letter.origin)}",
        f"key          {letter.key}",
        f"redrive      would {verdict(d)}",
        f"value        {'null' if value is None else f'(preview, {len(value)} characters)'}",
        *([] if value is None else [value]),
    ]


def redrive_line(d: dl.Decision, dry_run: bool) -> str:
    origin = origin_text(d.entry.letter.origin)
    if d.record is None:
        return f"{'skip':<10}  {d.entry.address:<7}  {origin}: {d.why}"
    verb = "would send" if dry_run else "sent"
    return f"{verb:<10}  {d.entry.address:<7}  {origin} (key {clip(d.entry.letter.key, 40)})"
