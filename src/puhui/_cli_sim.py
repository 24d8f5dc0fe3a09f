"""`puhui sim`: run the synthetic economy (`puhui.sim`) and write its labelled events."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from puhui._cli_common import (
    check_output_file,
    console,
    emit_json,
    reported_errors,
    written_output,
)
from puhui.config import Settings
from puhui.money import format_amount
from puhui.sim import Scenario, SimConfig, simulate, write_events

__all__ = ["sim_app"]

sim_app = typer.Typer(
    help="The synthetic economy: honest customers and labelled fraud through the real services.",
    no_args_is_help=True,
)


@sim_app.command("run")
def run(
    days: Annotated[int, typer.Option(help="Simulated days.")] = 30,
    customers: Annotated[int, typer.Option(help="Customers at the start.")] = 1_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same events.")] = 0,
    fraud_rate: Annotated[
        float, typer.Option(help="Multiplies every fraud scenario's incidence (0: no fraud).")
    ] = 1.0,
    scenario: Annotated[
        list[Scenario] | None,
        typer.Option(help="Only these fraud scenarios (repeat the option); default: all."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the events (JSON lines); default <data dir>/sim/."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (the report) last.")
    ] = False,
) -> None:
    """Run the economy with the pass-through risk and write its labelled events."""
    with reported_errors():
        config = SimConfig(
            customers=customers,
            days=days,
            seed=seed,
            fraud_rate=fraud_rate,
            scenarios=tuple(scenario) if scenario else tuple(Scenario),
        )
        target = out or Settings.from_env().data_dir / "sim" / f"events-seed{seed}.jsonl"
        check_output_file(target)
        shown = console()
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("days"),
            TimeElapsedColumn(),
            console=shown,
            transient=True,
        ) as progress:
            task = progress.add_task("days", total=days)
            report, events = simulate(
                config, on_day=lambda day: progress.update(task, completed=day + 1)
            )
        with written_output(target):
            written = write_events(events, target)
        table = Table(title=f"Simulation: {days} days, {customers:,} customers, seed {seed}")
        for column in ("scenario", "attacks", "events", "stopped", "attempted", "lost"):
            table.add_column(column, justify="left" if column == "scenario" else "right")
        for name, s in sorted(report.scenarios.items()):
            table.add_row(
                escape(name),
                f"{s.attacks:,}",
                f"{s.events:,}",
                f"{s.stopped:,}",
                format_amount(s.attempted, "CNY"),
                format_amount(s.lost, "CNY"),
            )
        shown.print(table)
        data = report.as_json()
        shown.print(
            f"{written:,} events in {escape(str(target))}; volume"
            f" {format_amount(report.volume, 'CNY')} CNY, fraud lost"
            f" {format_amount(report.fraud_lost, 'CNY')} CNY"
            f" (loss rate {report.loss_rate:.2e}); {report.elapsed_s:.1f} s"
        )
        if as_json:
            emit_json({"command": "sim run", "events_file": str(target), **data})
