"""Learned routers: trained on the project's own shadow results, never scored on their training rows.

A learned router predicts, from the request alone (never the frontier answer), the probability
that the strong model is needed: the label of a completed sample is 1 when the configured cheap
model's score fell below `bar` there. Features (`features`): the prompt's words (TF-IDF of
unigrams and bigrams), its length, the number of turns, code blocks, digits and question marks,
the requested model and each tag. Two algorithms: logistic regression (`logreg`) and gradient
boosting (`gbdt`), scikit-learn both.

No estimate may use a router on rows it was trained on:

- **At run time** a sample is scored by the newest version (or the pinned one) as it arrives; a
  version is trained only on samples stored before it was made, so what it scores is after its
  training cutoff by construction, and `router_scores.version` says which version did.
- **Backfill** (`cross_fit`): samples that arrived before a version existed get out-of-fold
  scores. `forward` (the default) splits them by time into folds and scores each fold with a
  model trained only on the folds before it (the first fold gets no score: nothing came before
  it); `kfold` scores each fold with a model trained on all the others (time leaks across folds:
  the operator's choice, recorded). The scheme is the score's `version` (`oof-forward/5`).

Versions are artefacts in `<models_dir>/<router>/`: `vNNNN.skops` (skops, not pickle: loading
runs no code) and `vNNNN.json` (training cutoff, rows, share of strong labels, cross-validated
AUC, algorithm, bar). `features` is plain Python with no import from this project, so the
exported scorer (`export_source`) runs the very code that was measured.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ALGORITHMS = ("logreg", "gbdt")
SCHEMES = ("forward", "kfold")


def features(messages: Sequence[Mapping[str, Any]], model: str, tags: Mapping[str, str]
             ) -> tuple[str, dict[str, float]]:
    """(prompt text, named numeric features) of a request: what a learned router sees."""
    parts = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        parts.append(str(c or ""))
    text = "\n".join(parts)
    last = parts[-1] if parts else ""
    out = {
        "log_chars": math.log1p(len(text)),
        "log_last_chars": math.log1p(len(last)),
        "turns": float(len(messages)),
        "system": float(any(m.get("role") == "system" for m in messages)),
        "code_blocks": float(text.count("```") // 2),
        "digits": math.log1p(sum(ch.isdigit() for ch in text)),
        "questions": float(text.count("?")),
        "lines": math.log1p(text.count("\n")),
        f"model={model}": 1.0,
    }
    for k, v in tags.items():
        out[f"tag:{k}={v}"] = 1.0
    return re.sub(r"\s+", " ", text)[:20000], out


def make_pipeline(algorithm: str) -> Any:
    """The estimator: TF-IDF of the text and the named features, then the classifier."""
    # scikit-learn and skops load when a router trains or loads (~1 s), not with every command.
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    cols = ColumnTransformer([
        ("text", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2,
                                 max_features=20000), 0),
        ("meta", DictVectorizer(), 1)])
    clf = (LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
           if algorithm == "logreg" else
           GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.1,
                                      random_state=0))
    return Pipeline([("features", cols), ("clf", clf)])


def matrix(rows: Sequence[tuple[str, dict[str, float]]]) -> Any:
    x = np.empty((len(rows), 2), dtype=object)
    for i, (text, meta) in enumerate(rows):
        x[i, 0], x[i, 1] = text, meta
    return x


def fit(rows: Sequence[tuple[str, dict[str, float]]], labels: Sequence[int], algorithm: str
        ) -> Any:
    return make_pipeline(algorithm).fit(matrix(rows), list(labels))


def predict(model: Any, rows: Sequence[tuple[str, dict[str, float]]]) -> list[float]:
    """P(strong needed) per row."""
    if not rows:
        return []
    proba = model.predict_proba(matrix(rows))
    col = list(model.classes_).index(1) if 1 in model.classes_ else None
    return [float(p[col]) if col is not None else 0.0 for p in proba]


def auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC (None with one class only)."""
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(list(labels), list(scores)))


def cross_fit(rows: Sequence[tuple[str, dict[str, float]]], labels: Sequence[int],
              algorithm: str, *, folds: int = 5, scheme: str = "forward") -> list[float | None]:
    """Out-of-fold P(strong) for rows in time order (see the module docstring): a row's score
    comes from a model that never saw it (and, `forward`, nothing after it). None: no model
    could be trained for it (its fold is first, or the training rows had one class)."""
    n = len(rows)
    out: list[float | None] = [None] * n
    if n < 2 * folds:
        return out
    bounds = [round(i * n / folds) for i in range(folds + 1)]
    for k in range(folds):
        lo, hi = bounds[k], bounds[k + 1]
        train = list(range(0, lo)) if scheme == "forward" else [
            i for i in range(n) if not lo <= i < hi]
        ys = [labels[i] for i in train]
        if len(set(ys)) < 2:
            continue
        model = fit([rows[i] for i in train], ys, algorithm)
        for i, p in zip(range(lo, hi), predict(model, rows[lo:hi]), strict=True):
            out[i] = p
    return out


@dataclass(frozen=True)
class VersionInfo:
    router: str
    version: int
    algorithm: str
    model: str  # the cheap model whose scores label the rows
    bar: float
    cutoff: str  # the newest training row's time (ISO, UTC)
    rows: int
    strong_share: float  # share of rows labelled "strong needed"
    cv_auc: float | None  # forward-chained, out-of-fold
    trained_at: str

    @property
    def tag(self) -> str:
        return f"v{self.version}"


def label(score: float, bar: float) -> int:
    """1: the cheap answer fell short of the bar there (the strong model was needed)."""
    return 0 if score >= bar else 1


def train_version(router: str, algorithm: str, model: str, bar: float,
                  rows: Sequence[tuple[str, dict[str, float]]], labels: Sequence[int],
                  cutoff: datetime, version: int) -> tuple[Any, VersionInfo]:
    """A new version on every row given (in time order), with its cross-validated AUC."""
    oof = cross_fit(rows, labels, algorithm, folds=5, scheme="forward")
    scored = [(y, p) for y, p in zip(labels, oof, strict=True) if p is not None]
    info = VersionInfo(
        router=router, version=version, algorithm=algorithm, model=model, bar=bar,
        cutoff=cutoff.astimezone(UTC).isoformat(), rows=len(rows),
        strong_share=sum(labels) / len(labels) if labels else math.nan,
        cv_auc=auc([y for y, _ in scored], [p for _, p in scored]),
        trained_at=datetime.now(UTC).isoformat())
    return fit(rows, labels, algorithm), info


# -- artefacts -----------------------------------------------------------------------------------

_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")


def version_paths(models_dir: Path, router: str, version: int) -> tuple[Path, Path]:
    base = models_dir / router / f"v{version:04d}"
    return base.with_suffix(".skops"), base.with_suffix(".json")


def save_version(models_dir: Path, model: Any, info: VersionInfo) -> Path:
    import skops.io as sio
    art, meta = version_paths(models_dir, info.router, info.version)
    art.parent.mkdir(parents=True, exist_ok=True)
    tmp = art.with_suffix(".skops.tmp")
    sio.dump(model, tmp)
    tmp.replace(art)  # the artefact first: a listed version always has its model
    meta.write_text(json.dumps(asdict(info), indent=2))
    return art


def list_versions(models_dir: Path, router: str) -> list[VersionInfo]:
    out = []
    for meta in sorted((models_dir / router).glob("v*.json")):
        try:
            out.append(VersionInfo(**json.loads(meta.read_text())))
        except (ValueError, TypeError):
            continue  # not one of ours, or half-written: never a version
    return sorted(out, key=lambda v: v.version)


def load_model(path: Path) -> Any:
    """A saved model, loaded with skops: only scikit-learn, NumPy and SciPy types are trusted."""
    import skops.io as sio
    untrusted = sio.get_untrusted_types(file=path)
    bad = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise ValueError(f"{path}: refusing to load types {', '.join(bad[:5])}")
    return sio.load(path, trusted=untrusted)


def export_source() -> str:
    """A standalone module that scores requests with an exported version: this module's own
    `features`, `matrix` and a `score` over a skops file (needs scikit-learn and skops only)."""
    return "\n\n".join([
        '"""A shadowroute learned router, exported: score(messages, model, tags) -> P(strong).\n\n'
        'At threshold t send a request to the cheap model when score < t."""\n\n'
        "from __future__ import annotations\n\nimport math\nimport re\n"
        "from collections.abc import Mapping, Sequence\n"
        "from pathlib import Path\nfrom typing import Any\n\nimport numpy as np\n"
        "import skops.io as sio\n",
        inspect.getsource(features), inspect.getsource(matrix),
        'MODEL_PATH = Path(__file__).with_name("model.skops")\n'
        "_model: Any = None\n\n\n"
        "def score(messages: Sequence[Mapping[str, Any]], model: str, tags: Mapping[str, str]"
        ") -> float:\n"
        "    global _model\n"
        "    if _model is None:\n"
        "        _model = sio.load(MODEL_PATH, trusted=sio.get_untrusted_types(file=MODEL_PATH))\n"
        "    proba = _model.predict_proba(matrix([features(messages, model, tags)]))[0]\n"
        "    classes = list(_model.classes_)\n"
        "    return float(proba[classes.index(1)]) if 1 in classes else 0.0\n"])


_VERSION_RE = re.compile(r"^v(\d+)$")


def parse_version(text: str) -> int:
    m = _VERSION_RE.match(text) or re.match(r"^(\d+)$", text)
    if not m:
        raise ValueError(f"not a version: {text!r} (e.g. v3 or 3)")
    return int(m.group(1))
