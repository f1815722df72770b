"""The hybrid's item-item term (movrec.item_item): EASE's weights cut per movie, chosen on the
validation split, stored with the model and added by recommend() in both installs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest
from movrec import item_item
from movrec.closed_form import binary_matrix, fit_ease
from movrec.errors import CorruptCheckpoint
from movrec.item_item import Neighbours
from movrec_cli import bench_portable, schema
from movrec_cli.cluster import Cluster
from movrec_cli.demo_data import load_demo

from tests.conftest import connect, install_into

QUICK = '{"epochs": 12, "patience": 12, "budget_s": 0}'


def _planted(n_users: int, n_items: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Users who each like one of four blocks of items, with some noise."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        block = u % 4
        for i in range(n_items):
            p = 0.5 if i % 4 == block else 0.05
            if rng.random() < p:
                users.append(u)
                items.append(i)
    r = rng.choice([2.0, 3.0, 4.0, 5.0], len(users))
    return np.array(users), np.array(items), r


@pytest.mark.parametrize("n_users", [30, 200])  # fewer users than items (Woodbury), and more
def test_uncut_weights_are_ease(n_users: int) -> None:
    """With every weight kept, each user's sum of their movies' weights is EASE's score x_u B
    (closed_form), for every rating as a positive and for ratings >= 4."""
    u, i, r = _planted(n_users, 60)
    for positive in (None, 4.0):
        nb = item_item.fit(u, i, r, lam=20.0, n=60, positive=positive)
        keep = np.ones(len(r), bool) if positive is None else r >= positive
        x = binary_matrix(u[keep], i[keep], n_users, 60)
        want = fit_ease(x, 20.0).score(np.arange(n_users))
        positions = nb.neighbour_ids  # items are their own columns
        for user in range(0, n_users, 7):
            got = nb.term(i[keep][u[keep] == user], positions, 60)
            active = x.sum(axis=0) > 0
            np.testing.assert_allclose(got[active], want[user, active], atol=1e-4)


def test_each_movie_keeps_its_largest_weights() -> None:
    u, i, r = _planted(40, 30)
    full = item_item.fit(u, i, r, lam=10.0, n=30)
    cut = item_item.fit(u, i, r, lam=10.0, n=5)
    for m in cut.movie_ids[:10]:
        row = slice(*full.indptr[np.searchsorted(full.movie_ids, m) + np.arange(2)])
        kept = slice(*cut.indptr[np.searchsorted(cut.movie_ids, m) + np.arange(2)])
        assert len(cut.neighbour_ids[kept]) == 5 and m not in cut.neighbour_ids[kept]
        biggest = np.sort(np.abs(full.weights[row]))[-5:]
        np.testing.assert_allclose(np.sort(np.abs(cut.weights[kept])), biggest, rtol=1e-5)


def test_pack_round_trip_and_a_damaged_blob() -> None:
    u, i, r = _planted(40, 30)
    nb = item_item.fit(u, i, r, lam=10.0, n=4).scaled(3.0)
    back = Neighbours.unpack(nb.pack())
    for a, b in zip(nb.triples(), back.triples(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CorruptCheckpoint, match="12-byte"):
        Neighbours.unpack(nb.pack()[:-1])


def test_choose_keeps_none_when_nothing_beats_the_model_alone() -> None:
    u, i, r = _planted(40, 30)
    rows = (u, i, r)
    chosen, about = item_item.choose(lambda nb: 0.5 if nb is None else 0.4, rows, rows)
    assert chosen is None and about["chosen"] is None
    n_trials = len(item_item.LAMBDAS) * len(item_item.KEPT) * len(item_item.BLENDS)
    assert len(about["trials"]) == n_trials
    best = {"lambda": item_item.LAMBDAS[1], "neighbours": 4, "w": item_item.BLENDS[2]}

    def score(nb: Neighbours | None) -> float:
        return 0.6 if nb is not None and _is(nb, rows, best) else 0.5

    chosen, about = item_item.choose(score, rows, rows, kept=(4, 8))
    assert about["chosen"] == best and chosen is not None
    want = item_item.fit(*rows, best["lambda"], 4).scaled(best["w"])
    np.testing.assert_allclose(chosen.weights, want.weights)


def _is(nb: Neighbours, rows: tuple[np.ndarray, ...], options: dict[str, float]) -> bool:
    want = item_item.fit(*rows, options["lambda"], int(options["neighbours"])).scaled(options["w"])
    return len(want) == len(nb) and np.allclose(want.weights, nb.weights)


def test_a_cut_of_the_fitted_weights_is_the_smaller_fit() -> None:
    u, i, r = _planted(40, 30)
    cut = item_item.fit(u, i, r, lam=10.0, n=12).cut(5)
    small = item_item.fit(u, i, r, lam=10.0, n=5)
    for a, b in zip(cut.triples(), small.triples(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# --- in the database -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_db(cluster: Cluster, new_database: Callable[[str], str]) -> Iterator[str]:
    """Demo data, content tokenized, a hybrid trained and deployed."""
    dsn = install_into(cluster, new_database("t_item_item"), "full")
    with connect(dsn) as conn:
        load_demo(conn, n_users=300, seed=11)
        conn.execute("SELECT * FROM movrec.tokenize()")
        conn.execute("SELECT movrec.train('hybrid', %s::jsonb)", (QUICK,))
    yield dsn


def _force_weights(conn: psycopg.Connection, weights: Neighbours) -> int:
    """Register a copy of the champion with these weights and deploy it; returns its id."""
    cols = bench_portable.REGISTRY_COLUMNS
    picked = cols.replace("item_item", "%s::bytea")
    model_id = conn.execute(
        f"INSERT INTO model.registry ({cols}) SELECT {picked} FROM model.registry "
        "WHERE model_id = (SELECT model_id FROM model.champion) RETURNING model_id",
        (weights.pack(),),
    ).fetchone()[0]
    conn.execute("SELECT movrec.deploy(%s)", (model_id,))
    return int(model_id)


def test_train_records_the_choice_with_the_model(hybrid_db: str) -> None:
    with connect(hybrid_db) as conn:
        params, blob, metrics = conn.execute(
            "SELECT params, item_item, metrics FROM model.registry WHERE kind = 'hybrid' "
            "ORDER BY model_id DESC LIMIT 1"
        ).fetchone()
    about = params["item_item"]
    assert len(about["trials"]) >= 1 and "val_ndcg@10_alone" in about
    assert (blob is None) == (about["chosen"] is None)
    if blob is not None:
        assert len(Neighbours.unpack(bytes(blob))) == about["n_weights"]
        assert metrics["val_ndcg@10"] == about["val_ndcg@10"]


def test_evaluate_scores_the_split_with_weights_that_never_saw_it(hybrid_db: str) -> None:
    """The served weights are refitted on every rating; evaluate() scores the stored split
    with weights refitted without it (the choice's options), as the choice scored it."""
    with connect(hybrid_db) as conn:
        found = conn.execute(
            "SELECT model_id, params FROM model.registry WHERE kind = 'hybrid' "
            "AND jsonb_typeof(params->'item_item'->'chosen') = 'object' ORDER BY model_id LIMIT 1"
        ).fetchone()
        if found is None:
            pytest.skip("validation kept no item-item weights for the demo's hybrid")
        model, params = found
        got = dict(conn.execute("SELECT * FROM movrec.evaluate(%s)", (model,)).fetchall())
    assert got["item_item_refitted_without_split"] == 1
    assert got["val_ndcg@10"] == pytest.approx(params["item_item"]["val_ndcg@10"], abs=1e-4)


def _expected(conn: psycopg.Connection, user: int, k: int, nb: Neighbours) -> list[int]:
    """recommend()'s model rows by hand: ranking + the rated movies' weights, unseen movies
    predicted >= 3 stars, best first (ties: lower movie id)."""
    ids, matrix, ranking, mean, emb, bias = conn.execute(
        "SELECT r.serving_movie_ids, r.serving_matrix, r.serving_ranking, r.global_mean, "
        "u.embedding::real[], u.bias FROM model.registry r JOIN model.champion c USING (model_id) "
        "JOIN model.user_latent_attributes u ON u.user_id = %s AND u.model_id = r.model_id",
        (user,),
    ).fetchone()
    movies = np.frombuffer(ids, np.int32).astype(np.int64)
    m = np.frombuffer(matrix, np.float32).reshape(len(movies), -1)
    rank = np.frombuffer(ranking, np.float32).reshape(len(movies), -1)
    u = np.asarray(emb, np.float32)
    seen = [
        r[0] for r in conn.execute("SELECT movie_id FROM watch_events WHERE user_id = %s", (user,))
    ]
    score = (
        rank[:, :-1] @ u
        + rank[:, -1]
        + nb.term(seen, np.searchsorted(movies, nb.neighbour_ids), len(movies))
    )
    predicted = m[:, :-1] @ u + m[:, -1] + bias + mean
    ok = (predicted >= 3.0) & ~np.isin(movies, seen)
    order = np.lexsort((movies, -score))
    return [int(movies[j]) for j in order if ok[j]][:k]


def test_recommend_adds_the_rated_movies_weights(hybrid_db: str) -> None:
    """recommend() orders by ranking + the weights of the user's rated movies, and a new
    rating moves the order through them (the trigger needs to do nothing more)."""
    with connect(hybrid_db) as conn:
        movies = [
            r[0] for r in conn.execute("SELECT movie_id FROM movrec.movies ORDER BY movie_id")
        ]
        rng = np.random.default_rng(3)
        src = np.repeat(movies, 4)
        nbr = np.concatenate(
            [rng.choice([x for x in movies if x != s], 4, replace=False) for s in movies]
        )
        weights = Neighbours.from_triples(src, nbr, rng.normal(0, 2.0, len(src)))
        # one movie that will be rated adds a large weight to one other
        user = 5
        seen = {
            r[0]
            for r in conn.execute("SELECT movie_id FROM watch_events WHERE user_id = %s", (user,))
        }
        unseen = [m for m in movies if m not in seen]
        rated = unseen[0]
        m, n, w = weights.triples()
        keep = m != rated  # the movie to be rated adds nothing yet but the weight below
        weights = Neighbours.from_triples(m[keep], n[keep], w[keep])
        _force_weights(conn, weights)
        top = {r[0] for r in conn.execute("SELECT movie_id FROM recommend(%s, 10)", (user,))}
        # the best-predicted movie outside the top 10: it passes the 3-star filter
        lifted = conn.execute(
            "SELECT m FROM unnest(%s::int[]) m WHERE m <> ALL (%s::int[]) "
            "ORDER BY movrec.predict(%s, m) DESC LIMIT 1",
            (unseen[1:], list(top), user),
        ).fetchone()[0]
        m, n, w = weights.triples()
        weights = Neighbours.from_triples(
            np.append(m, rated), np.append(n, lifted), np.append(w, 1000.0)
        )
        _force_weights(conn, weights)
        for u in (user, 17, 101):
            got = conn.execute("SELECT movie_id, source FROM recommend(%s, 10)", (u,)).fetchall()
            assert all(s == "model" for _, s in got)
            assert [g for g, _ in got] == _expected(conn, u, 10, weights), u
        before = [r[0] for r in conn.execute("SELECT movie_id FROM recommend(%s, 10)", (user,))]
        conn.execute("SELECT movrec.rate(%s, %s, 5)", (user, rated))
        after = conn.execute("SELECT movie_id, score FROM recommend(%s, 10)", (user,)).fetchall()
        assert lifted not in before and after[0][0] == lifted and after[0][1] > 900
        assert [r[0] for r in after] == _expected(conn, user, 10, weights)


def test_the_portable_install_ranks_the_same(
    hybrid_db: str, cluster: Cluster, new_database: Callable[[str], str]
) -> None:
    port_dsn = install_into(cluster, new_database("t_item_item_portable"), "portable")
    with connect(hybrid_db) as full, connect(port_dsn) as port:
        assert schema.install_kind(port) == "portable"
        bench_portable.copy_data(full, port)
        assert port.execute("SELECT count(*) > 0 FROM model.movie_neighbours").fetchone()[0]
        for user in range(1, 300, 23):
            for call in (
                "SELECT movie_id, score, predicted_rating, source FROM movrec.recommend(%s, 10)",
                "SELECT movie_id, score, predicted_rating, source FROM movrec.recommend(%s, 5, '{Drama}')",
            ):
                want = full.execute(call, (user,)).fetchall()
                got = port.execute(call, (user,)).fetchall()
                assert [r[0] for r in got] == [r[0] for r in want], user
                assert [r[3] for r in got] == [r[3] for r in want]
                flat = [x for r in got for x in r[1:3]]
                assert flat == pytest.approx([x for r in want for x in r[1:3]], abs=1e-3)
        # the stored lists (model.model_recommendation) are recommend()'s order in both
        for conn in (full, port):
            for user in (3, 50):
                conn.execute("SELECT movrec.refresh_recommendations_batch(ARRAY[%s])", (user,))
                stored = conn.execute(
                    "SELECT movie_id FROM model.model_recommendation WHERE user_id = %s "
                    "ORDER BY rank LIMIT 10",
                    (user,),
                ).fetchall()
                served = conn.execute(
                    "SELECT movie_id FROM movrec.recommend(%s, 10)", (user,)
                ).fetchall()
                assert stored == served, (conn.info.dbname, user)
