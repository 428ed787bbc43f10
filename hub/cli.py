"""The `omnihub` command line (typer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from hub.config import Settings, load_settings
from hub.errors import ConfigError
from hub.logs import setup_logging
from hub.runtime import Hub

cli = typer.Typer(help="omnihub: one customer, one conversation, every channel.",
                  no_args_is_help=True, add_completion=False)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

ConfigOption = Annotated[str | None, typer.Option("--config", help="Path to omnihub.toml.")]


@contextlib.contextmanager
def _config_errors_exit() -> Iterator[None]:
    """Turn a ConfigError into its message on stderr and exit status 2, not a traceback."""
    try:
        yield
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _settings(config: str | None) -> Settings:
    with _config_errors_exit():
        settings = load_settings(config)
    setup_logging(settings.log_level)
    return settings


@contextlib.contextmanager
def _storage(settings: Settings) -> Iterator[Hub]:
    """A hub with storage open, reusing the servers of a running `omnihub serve`."""
    hub = Hub(settings)
    with _config_errors_exit():
        hub.open_servers()
    try:
        yield hub
    finally:
        asyncio.run(hub.close())


@cli.command()
def serve(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          config: ConfigOption = None,
          worker: Annotated[bool, typer.Option(help="Run a job worker in-process.")] = True,
          smtp: Annotated[str | None, typer.Option(
              help="Also receive mail for email accounts over SMTP on HOST:PORT.")] = None,
          ) -> None:
    """Run the HTTP app (and a worker), starting embedded servers when none are configured."""
    import dataclasses

    import uvicorn

    from hub.app import create_app

    settings = _settings(config)
    if smtp:
        settings = dataclasses.replace(settings, smtp_listen=smtp)
    with _config_errors_exit():
        Hub(settings).load_plugins()  # fail here, with a clear message, on a bad account
    typer.echo(f"omnihub listening on http://{host}:{port} (data in {settings.data_dir})")
    uvicorn.run(create_app(settings, run_worker=worker), host=host, port=port, log_level="warning")


@cli.command("worker")
def worker_command(config: ConfigOption = None,
                   burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")]
                   = False) -> None:
    """Run background job workers only (production: many of them on shared Redis)."""
    from hub.jobs import make_worker

    settings = _settings(config)

    async def run() -> None:
        hub = Hub(settings)
        with _config_errors_exit():
            await hub.start()
        tasks = [] if burst else await hub.run_background("worker")
        try:
            await make_worker(hub, burst=burst).async_run()
        finally:
            for task in tasks:
                task.cancel()
            await hub.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@cli.command("plugins")
def plugins_command(config: ConfigOption = None) -> None:
    """List adapters and plugins: name, kind, distribution and version, status."""
    settings = _settings(config)
    hub = Hub(settings)
    hub.plugins.load_entry_points()
    for info in hub.plugins.infos:
        typer.echo(f"{info.name}\t{info.kind}\t{info.distribution} {info.version}\t{info.status}")


@keys_cli.command("create")
def keys_create(role: Annotated[str, typer.Option(help="admin, agent, marketer or app.")],
                name: Annotated[str, typer.Option(help="A label for the key.")] = "",
                config: ConfigOption = None) -> None:
    """Create an API key; the key alone is printed on the last line."""
    from hub.auth import create_key
    from hub.models import ROLES

    if role not in ROLES:
        raise typer.BadParameter(f"choose one of {', '.join(ROLES)}", param_hint="--role")
    settings = _settings(config)
    with _storage(settings):
        key = create_key(role, name)
    typer.echo(f"Created a {role} key. It is shown once; store it now:", err=False)
    typer.echo(key)


customers_cli = typer.Typer(help="Customer profiles.", no_args_is_help=True)
segments_cli = typer.Typer(help="Segments of customers.", no_args_is_help=True)
cli.add_typer(customers_cli, name="customers")
cli.add_typer(segments_cli, name="segments")


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), transient=False)


@customers_cli.command("import")
def customers_import(
        file: Annotated[Path, typer.Argument(help="CSV with phone/email/app_user_id columns.")],
        region: Annotated[str, typer.Option(help="Region for local phone numbers.")] = "CN",
        config: ConfigOption = None) -> None:
    """Import customers from CSV: deduplicated by identity, bad rows reported, re-runnable."""
    from scrm.importer import import_csv

    if not file.is_file():
        typer.echo(f"error: {file} does not exist or is not a file", err=True)
        raise typer.Exit(2)
    with file.open("rb") as fh:
        total = max(sum(1 for _ in fh) - 1, 0)
    settings = _settings(config)
    with _storage(settings), _progress() as progress:
        task = progress.add_task("importing", total=total)
        try:
            report = import_csv(file, region.upper(),
                                lambda n: progress.update(task, completed=n))
        except (ValueError, UnicodeDecodeError) as exc:
            typer.echo(f"error: {file}: {exc}; fix the file and run the import again", err=True)
            raise typer.Exit(2) from None
    for line, problem in report.bad:
        typer.echo(f"line {line}: {problem} (skipped)", err=True)
    typer.echo(f"{report.rows} rows: {report.created} new customers, {report.updated} updated, "
               f"{len(report.bad)} skipped")
    if report.bad:
        typer.echo("Fix the skipped lines and import the file again; rows already imported "
                   "are updated, not duplicated.", err=True)


@segments_cli.command("export")
def segments_export(
        segment: Annotated[str, typer.Argument(help="A saved segment's name, or an expression.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
        fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
        config: ConfigOption = None) -> None:
    """Export the customers of a segment to CSV or JSON lines, with a progress bar."""
    from scrm.export import export_rows, render
    from scrm.models import Segment
    from scrm.segments import SegmentSyntaxError, compile_expression, count

    if fmt not in ("csv", "jsonl"):
        raise typer.BadParameter("choose csv or jsonl", param_hint="--format")
    settings = _settings(config)
    with _storage(settings):
        saved = Segment.objects(name=segment).first()
        expression = saved.expression if saved else segment
        try:
            compiled = compile_expression(expression)
        except SegmentSyntaxError as exc:
            typer.echo(f"error: no saved segment named {segment!r}, and as an expression: "
                       f"{exc.message}", err=True)
            raise typer.Exit(2) from None
        total = count(expression)
        with output.open("w", encoding="utf-8", newline="") as fh, _progress() as progress:
            task = progress.add_task("exporting", total=total)
            for text, rows in render(export_rows(compiled.filter, compiled.hint), fmt):
                fh.write(text)
                progress.update(task, advance=rows)
    typer.echo(f"{total} customers written to {output}")


@cli.command()
def demo(config: ConfigOption = None) -> None:
    """Seed a demo customer and walk them through a conversation, printing what agents see."""
    from hub.demo import run_demo

    settings = _settings(config)
    asyncio.run(run_demo(settings))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
