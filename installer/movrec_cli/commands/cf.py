"""`movrec cf`: user-to-user Pearson CF (movrec.user_to_user) on demand, its queue and schedule."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from movrec_cli import inprocess, schema
from movrec_cli.connection import connect, one
from movrec_cli.errors import CliError
from movrec_cli.options import cf_options, dsn_option
from movrec_cli.output import percentiles, progress, table

USER_TO_USER_SQL = """SELECT count(*) FROM movrec.user_to_user(
    %(user)s, min_corr => %(min_corr)s, min_overlap => %(min_overlap)s, min_raters => %(min_raters)s,
    shrinkage => %(shrinkage)s, damping => %(damping)s, baseline => %(baseline)s, store => %(store)s)"""


@click.group()
def cf() -> None:
    """User-to-user Pearson collaborative filtering (movrec.user_to_user).

    \b
    A rating enqueues its user in model.cf_queue; `movrec worker` (or pg_cron,
    `movrec cf schedule`) recomputes the user's top 150 into model.user_recommendation.
    """


@cf.command("refresh")
@dsn_option
@click.option("--user", "user_ids", type=int, multiple=True, help="this user (repeatable)")
@click.option(
    "--all", "all_users", is_flag=True, help="every user with ratings or stored recommendations"
)
@cf_options
def cf_refresh(dsn: str | None, user_ids: tuple[int, ...], all_users: bool, **options: Any) -> None:
    """Recompute users' recommendations now (each user in its own transaction).

    Queued jobs stay queued: the worker recomputes those users again, harmlessly.
    """
    if bool(user_ids) == all_users:
        raise CliError("say which users: --user N (repeatable) or --all")
    opts = dict(options)
    with connect(dsn) as conn:
        portable = schema.install_kind(conn) == "portable"
        if all_users:
            users = [
                r[0]
                for r in conn.execute(
                    """SELECT user_id FROM model.user_rating_stats WHERE n_ratings > 0
                       UNION SELECT user_id FROM model.user_recommendation ORDER BY 1"""
                )
            ]
        else:
            users = list(user_ids)
        timings, with_recs, rows = [], 0, 0
        started = time.perf_counter()
        with progress(users, "cf refresh") as bar:
            for user in bar:
                t = time.perf_counter()
                if portable:  # no PL/Python there: CF runs in this process
                    n = inprocess.user_to_user(conn, user, **opts)
                else:
                    n = one(conn.execute(USER_TO_USER_SQL, {"user": user, "store": True, **opts}))[
                        0
                    ]
                timings.append((time.perf_counter() - t) * 1000)
                with_recs += n > 0
                rows += n
        if len(users) == 1:
            top = conn.execute(
                """SELECT r.rank, r.movie_id, m.title, r.score FROM model.user_recommendation r
                   JOIN movrec.movies m USING (movie_id) WHERE r.user_id = %s ORDER BY r.rank LIMIT 10""",
                (users[0],),
            ).fetchall()
            click.echo(table(top, ["rank", "movie_id", "title", "score"]))
    p50, p99, _ = percentiles(timings) if timings else (0.0, 0.0, 0.0)
    click.echo(
        f"{len(users)} users in {time.perf_counter() - started:.1f} s ({p50:.1f} ms p50, {p99:.1f} ms p99); "
        f"{with_recs} with recommendations, {rows} rows in model.user_recommendation"
    )


@cf.command("status")
@dsn_option
def cf_status(dsn: str | None) -> None:
    """The queue, failing jobs, and the statistics table."""
    with connect(dsn) as conn:
        q = one(
            conn.execute(
                """SELECT count(*), count(*) FILTER (WHERE not_before <= now()),
                      count(*) FILTER (WHERE attempts > 0), min(enqueued_at)
               FROM model.cf_queue"""
            )
        )
        s = one(
            conn.execute(
                """SELECT count(*) FILTER (WHERE n_ratings > 0), coalesce(sum(n_ratings), 0),
                      (SELECT count(DISTINCT user_id) FROM model.user_recommendation)
               FROM model.user_rating_stats"""
            )
        )
        click.echo(
            f"queue: {q[0]} jobs, {q[1]} due, {q[2]} failed at least once; oldest {q[3] or '-'}"
        )
        click.echo(
            f"statistics: {s[0]} users with {s[1]} ratings; {s[2]} users have recommendations"
        )
        failing = conn.execute(
            """SELECT user_id, attempts, not_before, last_error FROM model.cf_queue
               WHERE attempts > 0 ORDER BY attempts DESC, user_id LIMIT 10"""
        ).fetchall()
        if failing:
            click.echo(table(failing, ["user", "attempts", "retry at", "last error"]))


@cf.command("schedule")
@dsn_option
@click.option("--every", "schedule", default="* * * * *", show_default=True, help="cron schedule")
@click.option("--max-jobs", default=100, show_default=True, help="jobs per run")
@click.option("--remove", is_flag=True, help="remove the pg_cron job instead")
def cf_schedule(dsn: str | None, schedule: str, max_jobs: int, remove: bool) -> None:
    """Drain the CF queue from pg_cron (movrec.cf_schedule); `movrec schedule` does every queue.

    Where pg_cron is not available in the database, an error says how to enable it.
    """
    with connect(dsn) as conn:
        if remove:
            gone = one(conn.execute("SELECT movrec.cf_unschedule()"))[0]
            click.echo(
                "pg_cron job movrec-cf-drain removed" if gone else "there was no pg_cron job"
            )
            return
        job = one(conn.execute("SELECT movrec.cf_schedule(%s, %s)", (schedule, max_jobs)))[0]
    click.echo(
        f"pg_cron job {job} (movrec-cf-drain): SELECT movrec.cf_drain({max_jobs}) at '{schedule}'"
    )


@cf.command("quality")
@click.argument("data_dir", metavar="DIR", type=click.Path(path_type=Path, exists=True))
@click.option("--seed", default=42, show_default=True)
def cf_quality(data_dir: Path, seed: int) -> None:
    """Coverage and RMSE on a seeded 90/10 split of DIR/ratings.csv (numpy, outside the database)."""
    from movrec_cli.cf_quality import quality_cf

    rows = quality_cf(data_dir / "ratings.csv", seed=seed)
    click.echo(
        table(
            rows,
            [
                "variant",
                "coverage",
                "covered rows",
                "RMSE covered",
                "RMSE clipped",
                "baseline RMSE same rows",
            ],
        )
    )


COMMANDS = [cf]
