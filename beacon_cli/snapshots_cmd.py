"""`beacon snapshots list|show|delete|optimize` — look after the snapshot store."""

from __future__ import annotations

import dataclasses
import json

import click

from .pipeline_options import explain_errors, store_options


@click.group("snapshots")
def snapshots() -> None:
    """List, show, verify, delete and compact stored snapshots."""


@snapshots.command("list")
@store_options
@click.option("--json", "as_json", is_flag=True)
@explain_errors
def list_(db, as_json) -> None:
    """One line per stored document: id, tokens, stored bytes, model, last update."""
    from pipelines.catalog import list_documents

    docs = list_documents(db)
    if as_json:
        click.echo(json.dumps([_summary(i) for i in docs], indent=2, default=str))
        return
    click.echo(f"{'doc_id':<40} {'tokens':>9} {'entries':>8} {'MB':>8}  {'model':<28} updated")
    for i in docs:
        click.echo(
            f"{i.doc_id[:40]:<40} {i.n_tokens:>9} {i.n_entries:>8} {i.stored_bytes / 1e6:>8.2f}"
            f"  {str(i.fingerprint.get('name', ''))[-28:]:<28} {i.updated_at:%Y-%m-%d %H:%M}"
        )
    click.echo(f"{len(docs)} documents, {sum(i.n_tokens for i in docs):,} tokens", err=True)


@snapshots.command("show")
@click.argument("doc_id")
@store_options
@explain_errors
def show(doc_id, db) -> None:
    """Everything recorded about DOC_ID (a stored id or its stem) as JSON."""
    from pipelines.catalog import show_document

    info = show_document(db, doc_id)
    d = dataclasses.asdict(info)
    d["state"] = info.state.to_dict()
    d["bytes_per_token"] = info.bytes_per_token
    click.echo(json.dumps(d, indent=2, default=str))


@snapshots.command("verify")
@click.argument("doc_ids", nargs=-1)
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print {checked, damaged: {doc_id: why}} as JSON.")
@explain_errors
def verify(doc_ids, db, as_json) -> None:
    """Check every checksum and fingerprint of DOC_IDS (default: every document); list the damaged ones.

    Reads every stored byte. Exit status 3 if any document is damaged: `beacon ingest CORPUS --repair`
    (or a plain ingest, for a damaged record) condenses them again.
    """
    from pipelines.catalog import verify_documents

    checked, damaged = verify_documents(db, list(doc_ids) or None)
    if as_json:
        click.echo(json.dumps({"checked": checked, "damaged": damaged}, indent=2))
    else:
        click.echo(f"{checked} documents checked, {len(damaged)} damaged")
        for doc_id, why in damaged.items():
            click.echo(f"  {doc_id}: {why}")
    if damaged:
        raise SystemExit(3)


@snapshots.command("delete")
@click.argument("doc_ids", nargs=-1, required=True)
@store_options
@click.option("--missing-ok", is_flag=True, help="Ignore ids that are not stored.")
@explain_errors
def delete(doc_ids, db, missing_ok) -> None:
    """Delete DOC_IDS (snapshots and search rows)."""
    from pipelines.catalog import delete_documents

    gone = delete_documents(db, list(doc_ids), missing_ok=missing_ok)
    click.echo(f"deleted {len(gone)} of {len(doc_ids)}: {', '.join(gone)}")


@snapshots.command("optimize")
@store_options
@click.option(
    "--grace-s", type=float, default=3600.0, show_default=True, help="Keep unreferenced rows younger than this."
)
@click.option("--keep-versions-s", type=float, default=3600.0, show_default=True, help="Keep table versions this long.")
@explain_errors
def optimize(db, grace_s, keep_versions_s) -> None:
    """Delete dead rows, compact the tables (and the search table), drop old versions."""
    from pipelines.catalog import optimize_store

    report = optimize_store(db, grace_s=grace_s, keep_versions_s=keep_versions_s)
    click.echo(json.dumps(dataclasses.asdict(report), indent=2, default=str))


def _summary(info) -> dict:
    return {
        "doc_id": info.doc_id,
        "n_tokens": info.n_tokens,
        "n_entries": info.n_entries,
        "stored_bytes": info.stored_bytes,
        "bytes_per_token": info.bytes_per_token,
        "title": info.title,
        "source_uri": info.source_uri,
        "model": info.fingerprint.get("name"),
        "fingerprint_id": info.fingerprint_id,
        "updated_at": info.updated_at,
    }
