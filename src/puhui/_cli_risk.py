"""``puhui risk``: judge the engine on a simulated month, train models, backtest rules, and
work the review cases."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from puhui import ledger as tb
from puhui._cli_common import EXIT_OK, console, emit_json, reported_errors
from puhui.clock import SystemClock
from puhui.config import Settings
from puhui.errors import InvalidInputError
from puhui.money import format_amount
from puhui.payments import Payments, SimulatedBank
from puhui.risk import CaseOutcome, Cases, CaseStatus, load_ruleset
from puhui.risk._backtest import backtest
from puhui.risk._engine import engine_schema
from puhui.risk._model import RiskModel
from puhui.sim import SimConfig
from puhui.sim._risk import risk_report, run_with_engine, train_on_runs
from puhui.store import create_engine, migrate

__all__ = ["risk_app"]

risk_app = typer.Typer(
    help="Risk control: report on a simulated month, train, backtest, review cases.",
    no_args_is_help=True,
)
cases_app = typer.Typer(help="Review cases: list them, decide them.", no_args_is_help=True)
risk_app.add_typer(cases_app, name="cases")

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object last.")]
Customers = Annotated[int, typer.Option(help="Customers of the simulated economy.")]
Days = Annotated[int, typer.Option(help="Simulated days.")]
Rules = Annotated[Path | None, typer.Option(help="Ruleset file (default: the shipped one).")]


def _progress() -> Progress:
    return Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
        TimeElapsedColumn(),
        console=console(),
        transient=True,
    )


def _default_log() -> Path:
    return Settings.from_env().data_dir / "risk" / "log"


@risk_app.command("report")
def report(
    customers: Customers = 1_000,
    days: Days = 30,
    seed: Annotated[int, typer.Option(help="A seed not used for training or tuning.")] = 1001,
    fraud_rate: Annotated[float, typer.Option(help="Times the usual fraud incidence.")] = 1.0,
    rules: Rules = None,
    model: Annotated[Path | None, typer.Option(help="A model file from `risk train`.")] = None,
    log: Annotated[
        Path | None, typer.Option(help="Keep the engine's decision log (and labels) here.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run a simulated month with the engine in front of every event and report the fraud
    loss rate, honest customers rejected or challenged, precision and recall per scenario."""
    with reported_errors():
        config = SimConfig(customers=customers, days=days, seed=seed, fraud_rate=fraud_rate)
        loaded = RiskModel.load(model) if model is not None else None
        with _progress() as progress:
            task = progress.add_task("days", total=days)
            sim, events = run_with_engine(
                config,
                rules=rules,
                model=loaded,
                log_dir=log,
                on_day=lambda day: progress.update(task, completed=day + 1),
            )
        if log is not None:
            labels = [1 if label else 0 for label in sim.risk_labels]
            (log / "labels.json").write_text(json.dumps(labels))
        figures = risk_report(sim, events)
        figures["model"] = loaded.version if loaded is not None else "none"
        _print_report(figures)
        if as_json:
            emit_json({"command": "risk report", **figures})


def _print_report(figures: dict[str, Any]) -> None:
    shown = console()
    table = Table(title="Fraud by scenario (held-out simulated run)")
    for column in ("scenario", "attacks", "events", "recall", "precision", "attempted", "lost"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for name, s in figures["scenarios"].items():
        table.add_row(
            escape(name),
            f"{s['attacks']:,}",
            f"{s['events']:,}",
            "-" if s["recall"] is None else f"{s['recall']:.3f}",
            "-" if s["precision"] is None else f"{s['precision']:.3f}",
            format_amount(s["attempted"], "CNY"),
            format_amount(s["lost"], "CNY"),
        )
    shown.print(table)
    shown.print(
        f"loss rate {figures['loss_rate']:.2e} (target <= 1e-5) of volume"
        f" {format_amount(figures['volume'], 'CNY')} CNY; honest money events rejected"
        f" {figures['good_rejected_rate']:.3%} (<= 0.1%), challenged"
        f" {figures['good_challenged_rate']:.3%} (<= 0.5%), held for review"
        f" {figures['good_reviewed_rate']:.3%}"
    )


@risk_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Where to write the model file.")],
    customers: Customers = 1_000,
    days: Days = 30,
    seed: Annotated[
        list[int] | None, typer.Option(help="Training seeds (repeat the option); default 1.")
    ] = None,
    fraud_rate: Annotated[
        float, typer.Option(help="Times the usual fraud incidence (more examples to learn).")
    ] = 5.0,
    as_json: AsJson = False,
) -> None:
    """Simulate (with every event accepted, so fraud runs its course), and train a model on
    the features the engine logged, labelled by the simulation's truth."""
    with reported_errors():
        seeds = seed or [1]
        configs = [
            SimConfig(customers=customers, days=days, seed=s, fraud_rate=fraud_rate) for s in seeds
        ]
        with _progress() as progress:
            task = progress.add_task("days", total=days * len(configs))
            done = [0]

            def tick(_day: int) -> None:
                done[0] += 1
                progress.update(task, completed=min(done[0], days * len(configs)))

            model = train_on_runs(configs, on_day=tick)
        model.save(out)
        m = model.metrics
        console().print(
            f"model {model.version} -> {escape(str(out))}: AUC {m.auc:.4f} on {m.rows:,} held-out"
            f" rows ({m.positives:,} fraud); precision {m.precision_at_500:.3f}, recall"
            f" {m.recall_at_500:.3f} at score 500"
        )
        if as_json:
            emit_json(
                {
                    "command": "risk train",
                    "model": str(out),
                    "version": model.version,
                    "seeds": seeds,
                    "metrics": m.as_json(),
                }
            )


def _day_ns(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9


@risk_app.command("backtest")
def backtest_command(
    rules: Annotated[Path, typer.Option(help="The candidate ruleset file.")],
    log: Annotated[
        Path | None, typer.Option(help="Decision log with labels.json (`risk report --log`).")
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="First day (UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="Day after the last (UTC).")] = None,
    as_json: AsJson = False,
) -> None:
    """Replay the logged history through a candidate ruleset: hits, precision, recall, fraud
    amount caught and good events hit, per rule and overall."""
    with reported_errors():
        directory = log or _default_log()
        labels_file = directory / "labels.json"
        if not labels_file.exists():
            raise InvalidInputError(f"no labels.json in {directory} (see `risk report --log`)")
        labels = json.loads(labels_file.read_text())
        ruleset = load_ruleset(rules, engine_schema())
        result = backtest(ruleset, directory, labels, from_ns=_day_ns(from_), to_ns=_day_ns(to))
        table = Table(title=f"Backtest of {escape(ruleset.version)}")
        for column in ("rule", "hits", "fraud", "good", "precision", "recall", "fraud amount"):
            table.add_column(column, justify="left" if column == "rule" else "right")
        for rule_id, s in result["rules"].items():
            table.add_row(
                escape(rule_id),
                f"{s['hits']:,}",
                f"{s['fraud_hits']:,}",
                f"{s['good_hits']:,}",
                "-" if s["precision"] is None else f"{s['precision']:.3f}",
                f"{s['recall']:.3f}",
                format_amount(s["fraud_amount"], "CNY"),
            )
        shown = console()
        shown.print(table)
        shown.print(
            f"{result['events']:,} events, {result['fraud']:,} fraud; flagged"
            f" {result['flagged']:,} (precision {result['precision'] or 0:.3f}, recall"
            f" {result['recall']:.3f}); good events hit {result['good_flagged']:,};"
            f" {result['added_latency_us_per_event']:.2f} us per event"
        )
        if as_json:
            emit_json({"command": "risk backtest", **result})


@contextlib.contextmanager
def _cases() -> Iterator[Cases]:
    """The case queue, with the payments service wired to carry out decisions."""
    settings = Settings.from_env()
    engine = create_engine(settings.database_url)
    try:
        migrate(engine)
        clock = SystemClock()
        cases = Cases(engine, clock)
        ledger = tb.open(settings.ledger_url)
        try:
            Payments(engine, ledger, clock=clock, bank=SimulatedBank(clock), cases=cases)
            yield cases
        finally:
            ledger.close()
    finally:
        engine.dispose()


@cases_app.command("list")
def cases_list(
    status: Annotated[
        CaseStatus | None, typer.Option(help="Only cases of this status.")
    ] = CaseStatus.OPEN,
    after: Annotated[int, typer.Option(help="Cursor: cases after this id.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: AsJson = False,
) -> None:
    """Cases waiting for an analyst (or of another status), oldest first."""
    with reported_errors(), _cases() as cases:
        found = cases.cases(status, after_id=after, limit=limit)
        table = Table(title="Review cases")
        for column in ("id", "status", "customer", "amount", "score", "reasons"):
            table.add_column(column)
        for c in found:
            table.add_row(
                str(c.id),
                str(c.status),
                str(c.customer_id),
                f"{format_amount(c.amount, c.currency)} {c.currency}",
                str(c.score),
                escape("; ".join(c.reasons[:3])),
            )
        console().print(table)
        if as_json:
            emit_json(
                {
                    "command": "risk cases list",
                    "cases": [c.as_json() for c in found],
                    "next_after": found[-1].id if found else None,
                }
            )


@cases_app.command("decide")
def cases_decide(
    case_id: Annotated[int, typer.Argument(help="The case id.")],
    analyst: Annotated[str, typer.Option(help="Who decides.")],
    outcome: Annotated[CaseOutcome, typer.Option(help="approve, reject or escalate.")],
    note: Annotated[str, typer.Option(help="Why.")] = "",
    takeover: Annotated[
        bool, typer.Option(help="Confirmed account takeover (with reject): freeze the account.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Decide a case: approve releases the held payment, reject returns it."""
    with reported_errors(), _cases() as cases:
        case = cases.decide(
            case_id, analyst=analyst, outcome=outcome, note=note, account_takeover=takeover
        )
        console().print(
            f"case {case.id}: {case.status} by {escape(case.analyst or '')}"
            f" ({'carried out' if case.resolved else 'to be carried out'})"
        )
        if as_json:
            emit_json({"command": "risk cases decide", "case": case.as_json()})
        raise typer.Exit(EXIT_OK)
