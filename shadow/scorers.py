"""Scorers: how good a cheap answer is relative to the frontier answer, in [0, 1].

A scorer is one function `(candidate, reference) -> float`, registered by name in `SCORERS`.
1.0 means "as good as the frontier answer for this purpose". A scorer that cannot judge a pair
(the reference is not JSON for `json_match`, has no code for `code`) raises `ScoreFailed` with
the reason: the runner records it as a failure (no value), never as a silent 0.

Closed answers (numbers, labels, extractions):

- `exact_match`: normalized text equality (case, whitespace, surrounding punctuation/quotes,
  articles and markdown emphasis ignored).
- `final_number`: GSM8K-style — the last number in each answer compared numerically
  (handles `1,234`, `-3`, `+2`, `0.50`, `$12`, `12%`, `1/2` stays as two numbers).
- `contains`: 1 when the normalized reference appears in the normalized candidate as a whole
  word sequence ("Paris" in "The capital is Paris."): for short-value tasks where a chattier
  model still gives the right value. It cannot see negation ("not Paris"): prefer
  `exact_match` where answers must be the value alone.
- `json_match`: both answers parsed as JSON (a ```json fence is allowed); the share of the
  reference's leaf values (by path) that the candidate has equal, over the union of both
  answers' leaf paths, so missing and extra keys both cost. Invalid JSON from the cheap model
  scores 0 when the frontier's was valid. `json_match:a.b,c` compares only those paths.
- `code`: the answers' fenced code blocks (else the whole answer) must parse (`ast` for
  Python) and be equal after normalisation (for Python: the AST, so formatting and comments do
  not count; other languages: comments and whitespace stripped). Model output is parsed, never
  executed.

Open-ended text (graded):

- `token_f1`: SQuAD-style token overlap F1 of the normalized answers.
- `rouge_l`: ROUGE-L F-measure, the longest common subsequence of the normalized tokens (order
  matters, gaps allowed), as in Lin (2004) with beta = 1.
- `tfidf_cosine`: cosine similarity of the answers' TF-IDF vectors (scikit-learn, unigrams and
  bigrams, sublinear tf), so rare, topical words count more than common ones. The vectorizers
  are fitted per segment (the scoring tag's value) on stored frontier answers by the service's
  scheduler (`TfidfCosine.fit`), never per call; a segment with too few answers uses the one
  fitted on all of them. Before the first fit it records a failure, not a score.
- `embedding_cosine`: cosine similarity of sentence embeddings (WordLlama, shipped in its wheel;
  optional extra `embed`; see `EmbeddingCosine`): the same meaning in other words scores high.
- `judge`: an LLM judge (`shadow.judge`, see `shadow.judge`), asked by the runner.

`auto` (see `pick`) chooses per sample from what the frontier answer is: a bare number →
`final_number`, one short label → `exact_match`, JSON → `json_match`, code blocks → `code`,
else the configured open-ended scorer; the choice is stored with the score.
"""

from __future__ import annotations

import ast
import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from consumers.errors import ConfigError
from shadow.config import ScoringConfig
from shadow.errors import ScoreFailed

Scorer = Callable[[str, str], float]



_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WS = re.compile(r"\s+")
_EMPHASIS = re.compile(r"[*_`]+")
_PUNCT_EDGES = string.punctuation + "“”‘’«»"
# A number: optional sign, optional currency, digits with optional thousands separators, decimals.
_NUMBER = re.compile(r"(?<![\w.])([-+−]?)\s?[$€£]?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def normalize(text: str) -> str:
    t = _EMPHASIS.sub("", text.lower())
    t = _WS.sub(" ", t).strip().strip(_PUNCT_EDGES).strip()
    t = _ARTICLES.sub(" ", t)
    return _WS.sub(" ", t).strip()


def exact_match(candidate: str, reference: str) -> float:
    if candidate == reference:
        return 1.0
    return 1.0 if normalize(candidate) == normalize(reference) else 0.0


def final_number(text: str) -> float | None:
    """The last number written in `text`, or None."""
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    if last is None:
        return None
    sign = -1.0 if last.group(1) in ("-", "−") else 1.0
    try:
        return sign * float(last.group(2).replace(",", ""))
    except ValueError:
        return None


def final_number_match(candidate: str, reference: str) -> float:
    ref = final_number(reference)
    cand = final_number(candidate)
    if ref is None or cand is None:
        # No number in the reference: fall back to text equality rather than guessing.
        return exact_match(candidate, reference) if ref is None else 0.0
    return 1.0 if math.isclose(cand, ref, rel_tol=1e-6, abs_tol=1e-9) else 0.0


def _tokens(text: str) -> list[str]:
    # Punctuation glued to a word ("France,") is not part of the token, as in SQuAD.
    return [t for t in (w.strip(_PUNCT_EDGES) for w in normalize(text).split()) if t]


def token_f1(candidate: str, reference: str) -> float:
    c = _tokens(candidate)
    r = _tokens(reference)
    if not c or not r:
        return 1.0 if c == r else 0.0
    common = sum((Counter(c) & Counter(r)).values())
    if common == 0:
        return 0.0
    p, rc = common / len(c), common / len(r)
    return 2 * p * rc / (p + rc)


def contains(candidate: str, reference: str) -> float:
    ref = _words(reference)
    if not ref:
        return exact_match(candidate, reference)
    return 1.0 if f" {ref} " in f" {_words(candidate)} " else 0.0


def _words(text: str) -> str:
    return _WS.sub(" ", _PUNCT_SPACES.sub(" ", normalize(text))).strip()


_PUNCT_SPACES = re.compile(r"[^\w\s@./:+-]+|(?<=\w)[.,:;!?](?=\s|$)")


def rouge_l(candidate: str, reference: str) -> float:
    c, r = _tokens(candidate), _tokens(reference)
    if not c or not r:
        return 1.0 if c == r else 0.0
    lcs = _lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rc = lcs / len(c), lcs / len(r)
    return 2 * p * rc / (p + rc)


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)  # one row of the DP table: O(len(b)) memory
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


# -- JSON ------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.S)


def _json_of(text: str) -> Any:
    """The JSON value an answer holds: the whole answer, else its first fenced block."""
    for attempt in (text.strip(), *(body.strip() for _, body in _FENCE.findall(text))):
        try:
            return json.loads(attempt)
        except ValueError:
            continue
    raise ValueError("not JSON")


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, str):
        return normalize(a) == normalize(b)
    return bool(a == b and type(a) is type(b))


def json_match(candidate: str, reference: str, paths: tuple[str, ...] = ()) -> float:
    try:
        ref = _json_of(reference)
    except ValueError:
        raise ScoreFailed("json_match: the frontier answer is not JSON") from None
    try:
        cand = _json_of(candidate)
    except ValueError:
        return 0.0  # the frontier's was valid JSON, the cheap model's is not
    ref_leaves, cand_leaves = dict(_leaves(ref)), dict(_leaves(cand))
    if paths:
        missing = [p for p in paths if p not in ref_leaves]
        if missing:
            raise ScoreFailed(f"json_match: the frontier answer has no {', '.join(missing)}")
        return sum(p in cand_leaves and _same(cand_leaves[p], ref_leaves[p])
                   for p in paths) / len(paths)
    keys = ref_leaves.keys() | cand_leaves.keys()
    same = sum(k in ref_leaves and k in cand_leaves and _same(cand_leaves[k], ref_leaves[k])
               for k in keys)
    return same / len(keys)


def json_paths(paths: str) -> Scorer:
    """`json_match` restricted to comma-separated paths (`a.b,items[0].id`)."""
    chosen = tuple(p.strip() for p in paths.split(",") if p.strip())
    return lambda candidate, reference: json_match(candidate, reference, chosen)


# -- code ------------------------------------------------------------------------------------
_PY = {"", "py", "python", "python3", "py3"}
_LINE_COMMENT = re.compile(r"(//|#|--)[^\n]*")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block; the whole text as one block when it has none."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    return blocks or [("", text)]


def _normal_code(lang: str, code: str) -> str | None:
    """The code normalised for comparison, or None when Python code does not parse."""
    if lang in _PY:
        try:
            return ast.dump(ast.parse(code), annotate_fields=False)
        except (SyntaxError, ValueError):
            return None
    code = _BLOCK_COMMENT.sub("", code)
    code = _LINE_COMMENT.sub("", code)
    return " ".join(code.split())


def code_match(candidate: str, reference: str) -> float:
    ref_blocks = [b for b in _FENCE.findall(reference)]
    if not ref_blocks:
        raise ScoreFailed("code: the frontier answer has no fenced code block")
    ref = [_normal_code(lang.lower(), body) for lang, body in ref_blocks]
    if any(r is None for r in ref):
        raise ScoreFailed("code: the frontier answer's Python code does not parse")
    cand = [_normal_code(lang, body) for lang, body in _code_blocks(candidate)]
    if any(c is None for c in cand):
        return 0.0  # the cheap model's code does not parse
    return 1.0 if cand == ref else 0.0


# -- auto ------------------------------------------------------------------------------------
_BARE_NUMBER = re.compile(r"^[-+−]?\s?[$€£]?\s?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?\s?%?$|^[-+]?\.\d+$")


def pick(reference: str, open_ended: str = "token_f1") -> str:
    """The scorer `auto` uses for a frontier answer."""
    text = reference.strip()
    if _BARE_NUMBER.match(text.rstrip(".")):
        return "final_number"
    if _FENCE.search(text):
        try:
            _json_of(text)
            return "json_match"
        except ValueError:
            return "code"
    if text[:1] in "{[":
        try:
            _json_of(text)
            return "json_match"
        except ValueError:
            pass
    words = text.split()
    if 0 < len(words) <= 3 and len(text) <= 40 and not re.search(r"[.!?;:]\s", text + " "):
        return "exact_match"
    return open_ended


SCORERS: dict[str, Scorer] = {
    "code": code_match,
    "contains": contains,
    "exact_match": exact_match,
    "final_number": final_number_match,
    "json_match": json_match,
    "rouge_l": rouge_l,
    "token_f1": token_f1,
}
AUTO = "auto"
TFIDF = "tfidf_cosine"
EMBEDDING = "embedding_cosine"
JUDGE = "judge"  # the LLM judge (`shadow.judge`): scored by the runner, not here
OPEN_ENDED = ("token_f1", "rouge_l", "contains", TFIDF, EMBEDDING, JUDGE)


class EmbeddingCosine:
    """`embedding_cosine`: the cosine of the two answers' sentence embeddings, clipped to [0, 1].

    The model is WordLlama's `l2_supercat` (256 dimensions; MIT licence): token embeddings
    distilled from large language models' embedding codebooks, averaged over the text. Its wheel
    holds the weights and the tokenizer, so it loads offline in ~0.4 s and scores a pair in
    ~0.4 ms on one CPU core. Chosen over an ONNX MiniLM because no PyPI wheel ships one (they
    download it at first use). It rewards the same meaning in other words, which token overlap
    misses; like any averaged embedding it is lenient on a changed fact ("Tuesday" against
    "Wednesday" in an otherwise equal sentence scores ~0.94), so it suits paraphrase-heavy text
    more than answers whose one number or name decides them (use `auto`, which sends those to
    `final_number`/`exact_match`). Optional: `pip install 'shadowroute[embed]'`."""

    def __init__(self) -> None:
        self._model: Any = None

    @staticmethod
    def available() -> bool:
        import importlib.util
        return importlib.util.find_spec("wordllama") is not None

    def load(self) -> None:
        """Load the model now (the service does at start, not on its first sample)."""
        if self._model is None:
            import wordllama
            # The wheel ships the tokenizer under `tokenizers/`, which WordLlama looks for in
            # its cache directory: pointing that at the package finds both files offline.
            self._model = wordllama.WordLlama.load(
                cache_dir=Path(wordllama.__file__).parent, disable_download=True)

    def __call__(self, candidate: str, reference: str) -> float:
        if not reference.strip():
            raise ScoreFailed(f"{EMBEDDING}: the frontier answer is empty")
        if not candidate.strip():
            return 0.0
        self.load()
        return float(min(1.0, max(0.0, self._model.similarity(candidate, reference))))


class TfidfCosine:
    """`tfidf_cosine`, holding the vectorizers `fit` made (see the module docstring)."""

    def __init__(self, min_docs: int = 20) -> None:
        self.min_docs = min_docs  # answers a segment needs for a vectorizer of its own
        self._by_segment: dict[str, Any] = {}
        self._all: Any = None
        self.fitted_docs = 0

    @property
    def fitted(self) -> bool:
        return self._all is not None

    def fit(self, corpus: Mapping[str, Sequence[str]]) -> dict[str, int]:
        """Fit on frontier answers by segment; returns the answers each vectorizer saw ("" is
        the one fitted on all)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        def vectorizer(docs: Sequence[str]) -> Any:
            v = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                preprocessor=normalize)
            try:
                return v.fit(docs)
            except ValueError:  # empty vocabulary (answers of punctuation only)
                return None

        everything = [d for docs in corpus.values() for d in docs if d.strip()]
        if not everything:
            return {}
        fitted = {"": len(everything)}
        by_segment = {}
        for segment, docs in corpus.items():
            docs = [d for d in docs if d.strip()]
            if len(docs) >= self.min_docs and (v := vectorizer(docs)) is not None:
                by_segment[segment] = v
                fitted[segment] = len(docs)
        all_docs = vectorizer(everything)
        if all_docs is None:
            return {}
        # Swapped in whole: a call scoring meanwhile sees the old vectorizers or the new ones.
        self._by_segment, self._all, self.fitted_docs = by_segment, all_docs, len(everything)
        return fitted

    def __call__(self, candidate: str, reference: str, segment: str | None = None) -> float:
        vec = self._by_segment.get(segment or "", self._all)
        if vec is None:
            raise ScoreFailed(f"{TFIDF}: no vectorizer fitted yet (the service fits them on "
                              "stored frontier answers)")
        m = vec.transform([candidate, reference])  # rows are L2-normalised
        if m[1].nnz == 0:
            raise ScoreFailed(f"{TFIDF}: the frontier answer has no term the vectorizer knows")
        return float(min(1.0, max(0.0, (m[0] @ m[1].T).toarray()[0, 0])))


class Scoring:
    """Scores answers with the registered scorers, `auto`, and the fitted ones it holds."""

    def __init__(self, open_ended: str = "token_f1", tfidf: TfidfCosine | None = None,
                 embedding: EmbeddingCosine | None = None) -> None:
        self.open_ended = open_ended
        self.tfidf = tfidf or TfidfCosine()
        self.embedding = embedding or EmbeddingCosine()

    def wants_fit(self, name: str, reference: str) -> bool:
        """Whether scoring with `name` needs the fitted scorer, and it is not fitted yet."""
        if self.tfidf.fitted:
            return False
        return self.pick(name, reference) == TFIDF

    def pick(self, name: str, reference: str) -> str:
        """The scorer `name` means for this frontier answer (`auto` picks from it)."""
        return pick(reference, self.open_ended) if name == AUTO else name

    def score(self, name: str, candidate: str, reference: str, segment: str | None = None
              ) -> tuple[str, float | None, str | None]:
        """(scorer used, value, failure): `auto` picks from the reference; a scorer that cannot
        judge the pair gives no value and its reason."""
        used = self.pick(name, reference)
        try:
            if used == JUDGE:  # the runner asks the judge; here only without one configured
                raise ScoreFailed("judge: no LLM judge is configured (shadow.judge)")
            if used == TFIDF:
                value = self.tfidf(candidate, reference, segment)
            elif used == EMBEDDING:
                value = self.embedding(candidate, reference)
            else:
                value = resolve(used)(candidate, reference)
        except ScoreFailed as e:
            return used, None, str(e)
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            return used, None, f"{used}: value {value!r} outside [0, 1]"
        return used, value, None


def names() -> list[str]:
    """Every scorer name a config may use (besides `json_match:<paths>`)."""
    return sorted([AUTO, TFIDF, EMBEDDING, JUDGE, *SCORERS])


def resolve(name: str) -> Scorer:
    """The scorer for a configured name: a registered one, or `json_match:<paths>`."""
    if name in SCORERS:
        return SCORERS[name]
    if name.startswith("json_match:"):
        return json_paths(name.split(":", 1)[1])
    raise KeyError(name)


def known(name: str) -> bool:
    return name in (AUTO, TFIDF, EMBEDDING, JUDGE) or name in SCORERS or (name.startswith("json_match:")
                                               and bool(name.split(":", 1)[1].strip()))


def score(name: str, candidate: str, reference: str, open_ended: str = "token_f1"
          ) -> tuple[str, float | None, str | None]:
    """`Scoring.score` with no fitted scorer (a `tfidf_cosine` pair records a failure)."""
    return Scoring(open_ended).score(name, candidate, reference)


def check_scoring(sc: ScoringConfig, key: str = "scoring") -> None:
    """The `[scoring]` section: every scorer named is known."""
    for k, scorer in [(f"{key}.default", sc.default),
                      *((f"{key}.by_tag.{t}", v) for t, v in sc.by_tag.items())]:
        if not known(scorer):
            raise ConfigError(k, f"unknown scorer {scorer!r}; known: "
                                 f"{', '.join(names())}, json_match:<paths>")
    if sc.open_ended not in OPEN_ENDED:
        raise ConfigError(f"{key}.open_ended", f"must be one of {', '.join(OPEN_ENDED)}, got "
                                               f"{sc.open_ended!r}")
    for i, scorer in enumerate(sc.also):
        if not known(scorer) or scorer in (JUDGE, AUTO):
            raise ConfigError(f"{key}.also[{i}]", f"must be a scorer other than auto and judge, "
                              f"got {scorer!r}")
    for k, scorer in [(f"{key}.default", sc.default), (f"{key}.open_ended", sc.open_ended),
                      *((f"{key}.by_tag.{t}", v) for t, v in sc.by_tag.items()),
                      *((f"{key}.also[{i}]", v) for i, v in enumerate(sc.also))]:
        if scorer == EMBEDDING and not EmbeddingCosine.available():
            raise ConfigError(k, f"{EMBEDDING} needs its model: pip install 'shadowroute[embed]'")
