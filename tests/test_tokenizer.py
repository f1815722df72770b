"""The in-house tokenizer: normalisation, vocabularies, determinism, and the SQL path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from movrec import tokenizer as tk
from movrec_cli import pipeline, schema

from tests.conftest import connect


def test_words_normalise_case_accents_punctuation_and_emoji() -> None:
    assert tk.words("Amélie, une JEUNE serveuse à Montmartre!") == [
        "amelie",
        "une",
        "jeune",
        "serveuse",
        "a",
        "montmartre",
    ]
    assert tk.words("Se7en 🔪 -- don't") == ["se7en", "don", "t"]
    assert tk.words("ＡＢＣ ﬁlm") == ["abc", "film"]  # full-width and ligatures fold (NFKC)
    assert tk.words(None) == [] and tk.words("") == [] and tk.words("  ...  ") == []


def test_cjk_characters_are_tokens_and_hangul_survives() -> None:
    assert tk.words("千と千尋の神隠し") == ["千", "と", "千", "尋", "の", "神", "隠", "し"]
    assert tk.words("abc漢字def") == ["abc", "漢", "字", "def"]
    assert tk.words("기생충 Parasite") == ["기", "생", "충", "parasite"]


def test_items_keep_names_whole() -> None:
    assert tk.items(["Science Fiction", "Film-Noir", "  "]) == ["science fiction", "film noir"]
    assert tk.items("Action|Adventure") == ["action", "adventure"]
    assert tk.items("Tom Hanks, Tim Allen") == ["tom hanks", "tim allen"]
    assert tk.items(None) == [] and tk.items([]) == []


def test_vocabulary_reserves_pad_unk_and_orders_by_frequency() -> None:
    vocab = tk.Vocabulary.build("t", [["b", "a", "a"], ["c", "a", "b"], ["rare"]], min_freq=2)
    assert vocab.ids == {"a": 2, "b": 3}
    assert vocab.encode(["a", "zzz", "b"], 5) == [2, tk.UNK, 3, tk.PAD, tk.PAD]
    assert vocab.encode(["a"] * 9, 3) == [2, 2, 2]


def test_build_is_deterministic_and_handles_empty_and_huge_fields() -> None:
    movies = [
        {
            "title": "Alien",
            "overview": None,
            "genres": [],
            "cast_names": None,
            "keywords": ["space"],
            "companies": [],
            "countries": [],
        },
        {
            "title": "",
            "overview": "word " * 200_000 + "end",
            "genres": ["Horror"],
            "cast_names": ["Sigourney Weaver"],
            "keywords": ["space", "alien"],
            "companies": ["Fox"],
            "countries": ["United Kingdom"],
        },
    ]
    assert len(movies[1]["overview"]) > 1_000_000
    first = tk.build(movies)
    second = tk.build(list(movies))
    assert first[1] == second[1] and {k: v.ids for k, v in first[0].items()} == {
        k: v.ids for k, v in second[0].items()
    }
    arrays = first[1]
    assert all(len(a) == tk.FIELDS[f].length for f, rows in arrays.items() for a in rows)
    assert arrays["overview"][0] == [tk.PAD] * 64
    assert arrays["title"][1] == [tk.PAD] * 8


def test_tokenize_in_the_database_and_export(
    new_database: Callable[[str], str], tmp_path: Path
) -> None:
    with connect(new_database("t_tokenize")) as conn:
        schema.install(conn)
        conn.execute("""INSERT INTO movrec.movies (movie_id, title, genres, overview, countries) VALUES
            (1, 'Amélie', '{Comedy,Romance}', 'Amélie changes lives in Paris.', '{France}'),
            (2, '千と千尋の神隠し', '{Animation}', 'A girl, spirits; and a bathhouse 🛁.', '{Japan}'),
            (3, 'Paris, Texas', '{Drama}', NULL, '{France,Germany}')""")
        rows = {r[0]: r for r in conn.execute("SELECT * FROM movrec.tokenize()").fetchall()}
        assert rows["genres"][1] == 2 + 4 and rows["countries"][1] == 2 + 3
        assert conn.execute("SELECT movrec.detokenize(1, 'title')").fetchone()[0] == ["amelie"]
        assert conn.execute("SELECT movrec.detokenize(2, 'title')").fetchone()[0] == list(
            "千と千尋の神隠し"
        )
        assert conn.execute("SELECT movrec.detokenize(3, 'overview')").fetchone()[0] is None
        first = conn.execute(
            "SELECT movie_id, field, token_ids FROM movrec.movie_tokens ORDER BY 1, 2"
        ).fetchall()
        conn.execute("SELECT * FROM movrec.tokenize()")
        assert (
            conn.execute(
                "SELECT movie_id, field, token_ids FROM movrec.movie_tokens ORDER BY 1, 2"
            ).fetchall()
            == first
        )
        conn.execute(
            """SELECT * FROM movrec.tokenize('{"overview": {"length": 4, "min_freq": 1}}')"""
        )
        assert (
            len(
                conn.execute(
                    "SELECT token_ids FROM movrec.movie_tokens WHERE field = 'overview' LIMIT 1"
                ).fetchone()[0]
            )
            == 4
        )
        written = pipeline.export_tokens(conn, tmp_path)
    names = {p.name for p in written}
    assert {
        "title.pt",
        "overview.pt",
        "cast.pt",
        "genres.pt",
        "movie_ids.pt",
        "vocab.json",
    } <= names
    title = torch.load(tmp_path / "title.pt", weights_only=True)
    assert title.shape == (3, 8) and title.dtype == torch.int64
