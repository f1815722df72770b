"""The in-house tokenizer: no NLP library, deterministic, one vocabulary per field.

Text is lowercased (casefold), accents are stripped (NFKD, combining marks
dropped, then NFKC so Hangul recomposes), punctuation and symbols (emoji
included) separate tokens, and CJK characters become one token each (those
scripts do not separate words with spaces).  Word fields (title, overview) split
on whitespace; list fields (cast, genres, keywords, companies, countries) keep
each item whole ("science fiction" is one token).  Ids: PAD=0, UNK=1, then by
falling frequency, ties by token, so the same input always gives the same ids.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from movrec import backend

PAD, UNK = 0, 1
_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(
    r"[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
    r"\uf900-\ufaff\U00020000-\U0002fa1f]"
)


@dataclass(frozen=True)
class FieldSpec:
    column: str  # column of movrec.movies
    kind: str  # "words" or "items"
    length: int  # tokens per movie, padded or truncated
    min_freq: int  # rarer tokens map to UNK


FIELDS: dict[str, FieldSpec] = {
    "title": FieldSpec("title", "words", 8, 1),
    "overview": FieldSpec("overview", "words", 64, 2),
    "cast": FieldSpec("cast_names", "items", 8, 2),
    "genres": FieldSpec("genres", "items", 4, 1),
    "keywords": FieldSpec("keywords", "items", 16, 2),
    "companies": FieldSpec("companies", "items", 4, 2),
    "countries": FieldSpec("countries", "items", 3, 1),
}


def normalize(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFKC", stripped).casefold()


def _split_cjk(token: str) -> list[str]:
    if not _CJK.search(token):
        return [token]
    out: list[str] = []
    run = ""
    for ch in token:
        if _CJK.match(ch):
            if run:
                out.append(run)
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.append(run)
    return out


def words(text: str | None) -> list[str]:
    if not text:
        return []
    return [t for w in _WORD.findall(normalize(text)) for t in _split_cjk(w)]


def items(values: str | Sequence[str] | None) -> list[str]:
    """List fields: each item normalised and kept whole; a string splits on commas or '|'."""
    if not values:
        return []
    if isinstance(values, str):
        values = re.split(r"[,|]", values)
    out = []
    for v in values:
        item = " ".join(words(v))
        if item:
            out.append(item)
    return out


def tokens(spec: FieldSpec, value: str | Sequence[str] | None) -> list[str]:
    return (
        words(value if isinstance(value, str) or value is None else " ".join(value))
        if spec.kind == "words"
        else items(value)
    )


@dataclass
class Vocabulary:
    field: str
    ids: dict[str, int]
    counts: dict[str, int]

    @classmethod
    def build(cls, field: str, docs: Iterable[list[str]], min_freq: int) -> Vocabulary:
        counts = Counter(t for doc in docs for t in doc)
        kept = sorted(
            (t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t)
        )
        return cls(field, {t: i for i, t in enumerate(kept, start=2)}, {t: counts[t] for t in kept})

    def encode(self, toks: list[str], length: int) -> list[int]:
        ids = [self.ids.get(t, UNK) for t in toks[:length]]
        return ids + [PAD] * (length - len(ids))


def build(
    movies: Sequence[dict[str, object]], fields: dict[str, FieldSpec] | None = None
) -> tuple[dict[str, Vocabulary], dict[str, list[list[int]]]]:
    """Vocabularies and fixed-length id arrays (one per movie, in input order) per field."""
    fields = fields or FIELDS
    vocabs: dict[str, Vocabulary] = {}
    arrays: dict[str, list[list[int]]] = {}
    for name, spec in fields.items():
        docs = []
        for i, m in enumerate(movies):
            if i % 1024 == 0:
                backend.check_interrupts()
            docs.append(tokens(spec, m.get(spec.column)))  # type: ignore[arg-type]
        vocab = vocabs[name] = Vocabulary.build(name, docs, spec.min_freq)
        encoded = []
        for i, d in enumerate(docs):
            if i % 1024 == 0:
                backend.check_interrupts()
            encoded.append(vocab.encode(d, spec.length))
        arrays[name] = encoded
    return vocabs, arrays


# --- SQL glue ---------------------------------------------------------------------


# Bounds of the per-field options: a field longer than 1024 tokens would make every movie's
# array (and the sub-network's input) that long; min_freq 1 keeps every token.
TOKEN_BOUNDS = {"length": (1, 1024), "min_freq": (1, 1_000_000)}


def fields_from_options(options: str | None) -> dict[str, FieldSpec]:
    """options: {"overview": {"length": 128, "min_freq": 3}, ...} overrides the defaults.

    Each value is an integer within TOKEN_BOUNDS (2.0 counts as 2; 1.5, -5, true or "8" are
    refused with InvalidArgument naming the field and key, never truncated)."""
    from movrec.errors import InvalidArgument

    hint = f"fields: {', '.join(FIELDS)}; keys: length, min_freq"
    try:
        overrides = json.loads(options) if options else {}
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"tokenizer options are not valid JSON: {e}") from None
    if not isinstance(overrides, dict):
        raise InvalidArgument("tokenizer options must be a JSON object", hint=hint)
    fields = dict(FIELDS)
    for name, change in overrides.items():
        if name not in fields or not isinstance(change, dict) or set(change) - set(TOKEN_BOUNDS):
            raise InvalidArgument(f"bad tokenizer option {name!r}", hint=hint)
        values: dict[str, int] = {}
        for key, v in change.items():
            low, high = TOKEN_BOUNDS[key]
            integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            if isinstance(v, bool) or not integral or not low <= v <= high:
                raise InvalidArgument(
                    f"bad tokenizer option {name}.{key}: must be an integer in "
                    f"[{low}, {high}], got {json.dumps(v)}",
                    hint=hint,
                )
            values[key] = int(v)
        fields[name] = FieldSpec(**{**asdict(fields[name]), **values})
    return fields


def tokenize_from_sql(options: str | None) -> list[tuple[str, int, int, float]]:
    """Rebuild movrec.vocab and movrec.movie_tokens from movrec.movies (in the caller's transaction)."""
    import plpy  # type: ignore[import-not-found]

    fields = fields_from_options(options)
    columns = sorted({s.column for s in fields.values()})
    movies = list(
        plpy.execute(f"SELECT movie_id, {', '.join(columns)} FROM movrec.movies ORDER BY movie_id")
    )
    vocabs, arrays = build(movies, fields)
    plpy.execute("TRUNCATE movrec.vocab, movrec.movie_tokens")
    ids = [m["movie_id"] for m in movies]
    for name, vocab in vocabs.items():
        backend.execute(
            "INSERT INTO movrec.vocab (field, token, token_id, frequency) "
            "SELECT $1, t, i, f FROM unnest($2::text[], $3::int4[], $4::int4[]) AS u(t, i, f)",
            ["text", "text[]", "int4[]", "int4[]"],
            [name, list(vocab.ids), list(vocab.ids.values()), [vocab.counts[t] for t in vocab.ids]],
        )
    # one row per movie; arrays travel as JSON to keep it one statement
    encoded = []
    for name in fields:
        for i, a in enumerate(arrays[name]):
            if i % 1024 == 0:
                backend.check_interrupts()
            encoded.append(json.dumps(a))
    backend.execute(
        "INSERT INTO movrec.movie_tokens (movie_id, field, token_ids) "
        "SELECT m, f, ARRAY(SELECT jsonb_array_elements_text(a)::int4) "
        "FROM unnest($1::int4[], $2::text[], $3::jsonb[]) AS u(m, f, a)",
        ["int4[]", "text[]", "jsonb[]"],
        [
            [i for name in fields for i in ids],
            [name for name in fields for _ in ids],
            encoded,
        ],
    )
    report = []
    for name, spec in fields.items():
        filled = [t for a in arrays[name] for t in a if t != PAD]
        unk = sum(1 for t in filled if t == UNK) / len(filled) if filled else 0.0
        report.append((name, len(vocabs[name].ids) + 2, spec.length, round(unk, 4)))
    return report
