"""ICD-10-CM coding accuracy and lookup speed, with a plain SQL LIKE search as the peer.

    .venv/bin/python bench/terminology.py [--queries 400] [--titles-only] [--model DIR] [--device cuda]
        [--cache bench/.cache]
        [--llm-url http://127.0.0.1:8000/v1 --llm-model NAME [--llm-dialect json_object] [--candidates 10]]

The queries are text the index never saw: (1) tabular inclusion terms, each held out of the
build (the index keeps every other inclusion term, as the production index does), and (2)
variants of titles with clinical abbreviations and one-letter misspellings. ``--titles-only``
builds the index from billable-code titles alone (every inclusion term held out): a harder
setting that shows what the model knows without any synonym list. Reported: top-1 and top-3
for hybrid (fusion + re-rank), lexical-only and semantic-only lookup and for the LIKE peer;
p50/p99 latency and lookups/second; index build time and size. The first run builds the index
(~5 min on 2 cores) and caches it. ``--model`` embeds with a local sentence-transformers folder
instead of the built-in MiniLM (as ``PAPERCHART_EMBEDDING_MODEL`` does), in an index of its own.
``--device`` embeds on a CUDA GPU, for the build and the lookups (as ``PAPERCHART_EMBEDDING_DEVICE``
does); the vectors are the CPU's, so the index is shared.
``--llm-url`` adds a row for retrieval-augmented coding as the pipeline does it with
``PAPERCHART_CODE_CHOOSER=llm`` (``server.pipeline.code``): an exact match is taken as it is,
otherwise the LLM server picks one of the hybrid lookup's top ``--candidates`` (the pipeline shows
it 5) or none, which counts as a miss; if the server does not answer, similarity decides.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terminology.abbreviations import ABBREVIATIONS
from terminology.embed import Embedder, MiniLmEmbedder, SentenceTransformerEmbedder
from terminology.importers.icd10cm import Icd10cmBuiltinImporter, is_term
from terminology.index import BUILTIN_CONTENT, BUILTIN_CONTENT_KEY, build_index, open_index
from terminology.lookup import TerminologyService
from terminology.model import ICD10CM, Candidate

_REVERSE_ABBREVIATIONS = {long: short for short, long in ABBREVIATIONS.items() if not short.islower()}


def held_out_queries(rng: random.Random, count: int) -> list[tuple[str, str, str]]:
    """(kind, query, expected code) never present as designations in the titles-only index."""
    import simple_icd_10_cm as icd

    inclusion: list[tuple[str, str, str]] = []
    titles: list[tuple[str, str]] = []
    for code in icd.get_all_codes(with_dots=True):
        if not icd.is_leaf(code):
            continue
        title = icd.get_description(code)
        titles.append((code, title))
        for term in icd.get_inclusion_term(code):
            if term.lower() != title.lower() and is_term(term):
                inclusion.append(("inclusion term", term, code))
    queries = rng.sample(inclusion, min(count, len(inclusion)))
    variants: list[tuple[str, str, str]] = []
    rng.shuffle(titles)
    for code, title in titles:
        if len(variants) >= count // 2:
            break
        lowered = title.lower()
        for long, short in _REVERSE_ABBREVIATIONS.items():
            if long in lowered:
                variants.append(("abbreviation", re.sub(re.escape(long), short, title, flags=re.I), code))
                break
        else:
            words = title.split()
            candidates = [i for i, w in enumerate(words) if len(w) > 5 and w.isalpha()]
            if candidates:
                i = rng.choice(candidates)
                word = words[i]
                j = rng.randrange(1, len(word) - 1)
                words[i] = word[:j] + word[j + 1 :]  # drop one letter
                variants.append(("misspelling", " ".join(words), code))
    return queries + variants


# Mentions as notes write them, each with the code the ICD-10-CM Alphabetic Index and guidelines
# lead to, written by hand (not from the tabular's inclusion terms, and never used to tune). They
# watch the other side of the held-out queries: a plain "acute kidney injury" must stay N17.9, not
# go to the "Other ..." code that a specific inclusion term would want.
COMMON_MENTIONS: tuple[tuple[str, str], ...] = (
    ("Acute kidney injury", "N17.9"),
    ("Community acquired pneumonia", "J18.9"),
    ("Pneumonia", "J18.9"),
    ("Acute low back pain", "M54.50"),
    ("Worsening dyspnea", "R06.00"),
    ("Atypical chest pain", "R07.89"),
    ("Chest pain", "R07.9"),
    ("Hypothyroidism", "E03.9"),
    ("Paroxysmal atrial fibrillation", "I48.0"),
    ("Stage 3 chronic kidney disease", "N18.30"),
    ("Chronic kidney disease stage 4", "N18.4"),
    ("COPD with acute exacerbation", "J44.1"),
    ("Type 2 diabetes with neuropathy", "E11.40"),
    ("Type 1 diabetes with hypoglycemia", "E10.649"),
    ("Diabetic foot ulcer, left foot", "E11.621"),
    ("Left knee osteoarthritis", "M17.12"),
    ("Iron deficiency anemia", "D50.9"),
    ("Obstructive sleep apnea", "G47.33"),
    ("Acute on chronic diastolic heart failure", "I50.33"),
    ("Hypertensive heart disease with heart failure", "I11.0"),
    ("Non-ST elevation myocardial infarction", "I21.4"),
    ("Coronary artery disease", "I25.10"),
    ("Gastroesophageal reflux disease with esophagitis", "K21.00"),
    ("Migraine with aura, intractable", "G43.119"),
    ("Headache", "R51.9"),
    ("Sepsis due to MRSA", "A41.02"),
    ("Urinary tract infection", "N39.0"),
    ("Acute cystitis", "N30.00"),
    ("Major depression, recurrent, moderate", "F33.1"),
    ("Mild depression", "F32.0"),
    ("Anxiety", "F41.9"),
    ("Alcohol dependence with withdrawal", "F10.239"),
    ("Benign prostatic hyperplasia with urinary retention", "N40.1"),
    ("Cellulitis of right lower leg", "L03.115"),
    ("Mild intermittent asthma", "J45.20"),
    ("Hyperlipidemia", "E78.5"),
    ("Morbid obesity", "E66.01"),
    ("Osteoporosis", "M81.0"),
    ("Allergic rhinitis due to pollen", "J30.1"),
    ("Seasonal allergies", "J30.2"),
    ("Chronic pancreatitis", "K86.1"),
    ("Acute bronchitis", "J20.9"),
    ("Acute sinusitis", "J01.90"),
    ("Acute gout", "M10.9"),
    ("Dehydration", "E86.0"),
    ("Hypokalemia", "E87.6"),
    ("Insomnia", "G47.00"),
    ("Constipation", "K59.00"),
    ("Vitamin D deficiency", "E55.9"),
    ("Fever", "R50.9"),
    ("Nausea with vomiting", "R11.2"),
    ("Right hip fracture", "S72.001A"),
    ("Fracture of left wrist, initial encounter", "S62.102A"),
    # added later, plain mentions checked by hand whatever the lookup then answered (the first
    # three it got wrong, the next four it got right only after the change that added them)
    ("Breast cancer", "C50.919"),
    ("Deep vein thrombosis", "I82.409"),
    ("Family history of colon cancer", "Z80.0"),
    ("Preeclampsia", "O14.90"),
    ("Gestational diabetes", "O24.419"),
    ("Ovarian cancer", "C56.9"),
    ("COPD exacerbation", "J44.1"),
    ("Prostate cancer", "C61"),
    ("Atrial fibrillation", "I48.91"),
    ("Migraine", "G43.909"),
    ("Asthma", "J45.909"),
    ("Anemia", "D64.9"),
    ("Congestive heart failure", "I50.9"),
    # added later still: everyday mentions checked by hand against the Alphabetic Index, whatever the
    # lookup then answered (the first fifteen it got wrong)
    ("Rectal bleeding", "K62.5"),
    ("Heart attack", "I21.9"),
    ("Flu", "J11.1"),
    ("Common cold", "J00"),
    ("Gallstones", "K80.20"),
    ("Rheumatoid arthritis", "M06.9"),
    ("Alzheimer's disease", "G30.9"),
    ("Benign prostatic hyperplasia", "N40.0"),
    ("Erectile dysfunction", "N52.9"),
    ("German measles", "B06.9"),
    ("Pulmonary tuberculosis", "A15.0"),
    ("Tuberculosis", "A15.9"),
    ("Diverticulitis", "K57.92"),
    ("Gonorrhea", "A54.9"),
    ("Chlamydia", "A74.9"),
    ("Stroke", "I63.9"),
    ("Kidney stone", "N20.0"),
    ("Appendicitis", "K37"),
    ("Sinusitis", "J32.9"),
    ("Otitis media", "H66.90"),
    ("Conjunctivitis", "H10.9"),
    ("Epilepsy", "G40.909"),
    ("Seizure", "R56.9"),
    ("Obesity", "E66.9"),
    ("Osteoarthritis", "M19.90"),
    ("Shortness of breath", "R06.02"),
    ("Cough", "R05.9"),
    ("Diarrhea", "R19.7"),
    ("GERD", "K21.9"),
    ("Dizziness", "R42"),
    ("Syncope", "R55"),
    ("Fatigue", "R53.83"),
    ("COPD", "J44.9"),
    ("Chronic kidney disease", "N18.9"),
    ("Cellulitis", "L03.90"),
    ("Psoriasis", "L40.9"),
    ("Shingles", "B02.9"),
    ("Chickenpox", "B01.9"),
    ("Measles", "B05.9"),
    ("Rubella", "B06.9"),
    ("Sepsis", "A41.9"),
    ("Hyponatremia", "E87.1"),
    ("Dementia", "F03.90"),
    ("Colon cancer", "C18.9"),
    ("Lung cancer", "C34.90"),
    ("Pancreatic cancer", "C25.9"),
    ("Carpal tunnel syndrome", "G56.00"),
    ("Hemorrhoids", "K64.9"),
    ("Sleep apnea", "G47.30"),
    ("Alcohol abuse", "F10.10"),
    ("Pulmonary embolism", "I26.99"),
    ("Hypoglycemia", "E16.2"),
    ("Cirrhosis", "K74.60"),
    ("Irritable bowel syndrome", "K58.9"),
    ("Crohn's disease", "K50.90"),
    ("Ulcerative colitis", "K51.90"),
    ("Lyme disease", "A69.20"),
    ("Syphilis", "A53.9"),
    # a course named: the Index codes some by it ("Appendicitis, chronic K36"), most not
    ("Chronic sinusitis", "J32.9"),
    ("Acute pancreatitis", "K85.90"),
    ("Chronic bronchitis", "J42"),
    ("Chronic cough", "R05.3"),
    ("Acute cholecystitis", "K81.0"),
    ("Chronic cholecystitis", "K81.1"),
    ("Chronic pain", "G89.29"),
    ("Acute pharyngitis", "J02.9"),
    ("Chronic rhinitis", "J31.0"),
    ("Acute tonsillitis", "J03.90"),
    ("Chronic tonsillitis", "J35.01"),
    ("Acute laryngitis", "J04.0"),
    ("Chronic prostatitis", "N41.1"),
    ("Acute pyelonephritis", "N10"),
    ("Chronic pyelonephritis", "N11.9"),
    ("Acute myocardial infarction", "I21.9"),
    ("Acute urinary retention", "R33.9"),
    ("Chronic low back pain", "M54.50"),
    ("Acute respiratory failure", "J96.00"),
    ("Chronic respiratory failure", "J96.10"),
    ("Acute blood loss anemia", "D62"),
    ("Acute stress reaction", "F43.0"),
    ("Acute bronchiolitis", "J21.9"),
    ("Acute appendicitis", "K35.80"),
    ("Chronic appendicitis", "K36"),
    ("Chronic venous insufficiency", "I87.2"),
    ("Acute pneumothorax", "J93.83"),
    ("Chronic hepatitis", "K73.9"),
    ("Acute gastritis", "K29.00"),
    ("Chronic gastritis", "K29.50"),
    ("Chronic fatigue", "R53.82"),
    ("Acute diverticulitis", "K57.92"),
    ("Acute otitis media", "H66.90"),
    ("Chronic otitis media", "H66.90"),
    ("Chronic migraine", "G43.709"),
    ("Acute osteomyelitis", "M86.10"),
    ("Chronic osteomyelitis", "M86.60"),
)


def _outdated(index: Path, embedder: Embedder) -> bool:
    service = TerminologyService(index, embedder)
    try:
        return service.builtins_outdated()
    finally:
        service.close()


def embedder_for(model: Path | None, cache: Path, device: str = "cpu") -> tuple[Embedder, str]:
    """The embedder to bench, and the suffix that keeps its cached indexes apart from the built-in's."""
    if model is None:
        return MiniLmEmbedder(cache / "models", device=device), ""
    embedder = SentenceTransformerEmbedder(model, device=device)
    return embedder, f"-{embedder.name.replace('@', '-')}"


def like_search(db: object, query: str, limit: int = 3) -> list[str]:
    """The peer: designations containing every query word (SQL LIKE), shortest first; any word if none."""
    words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 2][:6]
    if not words:
        return []
    for joiner in (" AND ", " OR "):
        clause = joiner.join("d.term LIKE ?" for _ in words)
        rows = db.execute(  # type: ignore[attr-defined]
            "SELECT c.code FROM designation d JOIN concept c ON c.id = d.concept_id"
            f" WHERE c.system = ? AND ({clause}) GROUP BY c.id ORDER BY MIN(length(d.term)) LIMIT ?",
            [ICD10CM, *[f"%{w}%" for w in words], limit],
        ).fetchall()
        if rows:
            return [r[0] for r in rows]
    return []


def llm_choice(
    service: TerminologyService, chooser: Any, query: str, candidates: int, unanswered: list[str]
) -> list[str]:
    """The pipeline's retrieval-augmented coding of one mention: its code first, then the rest."""
    from server.pipeline.code import decide_diagnosis_codes

    found = service.lookup(query, systems=[ICD10CM], limit=candidates)
    codes = [c.code for c in found]
    coding = decide_diagnosis_codes([query], ICD10CM, [found], chooser)[0]
    if coding is None:
        unanswered.append(query)
        return ["none", *codes]
    return [coding.code, *(c for c in codes if c != coding.code)]


REVIEW_THRESHOLDS: tuple[float, ...] = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def print_review_table(tops: dict[str, Candidate], held_out: list[tuple[str, str]]) -> None:
    """How many mentions the pipeline would code without review at each similarity threshold
    (``PAPERCHART_CODE_ACCEPT_SIMILARITY``: an exact match, or the top candidate this close), and
    how many of those codes are right; the rest go to a reviewer as code-unresolved."""
    try:
        from server.pipeline.code import ACCEPT_SIMILARITY, accepted
    except ImportError:  # a GPU machine with the terminology package's dependencies alone
        print("\n(no review table: the server package's dependencies are not installed)")
        return

    print(
        "\nCoded without review by the pipeline's rule (exact match, or similarity >= threshold; "
        f"default {ACCEPT_SIMILARITY}):"
    )
    print(f"{'threshold':>9} {'held-out coded':>15} {'right':>7} {'common coded':>13} {'right':>7}")
    for threshold in REVIEW_THRESHOLDS:
        cells: list[str] = []
        for group in (held_out, list(COMMON_MENTIONS)):
            coded = [(q, code) for q, code in group if q in tops and accepted(tops[q], threshold)]
            right = sum(tops[q].code == code for q, code in coded)
            cells += [f"{len(coded) / len(group):.1%}", f"{right / len(coded) if coded else 0.0:.1%}"]
        print(f"{threshold:>9} {cells[0]:>15} {cells[1]:>7} {cells[2]:>13} {cells[3]:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=400, help="inclusion-term queries (plus half as many variants)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--titles-only", action="store_true", help="index titles only (all inclusion terms held out)")
    parser.add_argument("--model", type=Path, help="a sentence-transformers model folder (default: built-in MiniLM)")
    parser.add_argument("--device", default="cpu", help="where the model embeds: cpu, cuda, cuda:N or auto")
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument("--llm-url", help="an OpenAI-compatible server (vLLM, llama.cpp) to choose among candidates")
    parser.add_argument("--llm-model", default="default")
    parser.add_argument("--llm-dialect", choices=("json_schema", "json_object"), default="json_schema")
    parser.add_argument("--candidates", type=int, default=10, help="hybrid candidates the LLM chooses among")
    args = parser.parse_args()

    embedder, suffix = embedder_for(args.model, args.cache, args.device)
    queries = held_out_queries(random.Random(args.seed), args.queries)
    held_out = {(code, query) for kind, query, code in queries if kind == "inclusion term"}
    if args.titles_only:
        index = args.cache / f"icd10cm-titles{suffix}.db"
        importer = Icd10cmBuiltinImporter(with_inclusion_terms=False)
    else:
        index = args.cache / f"icd10cm-held-out-{args.seed}-{args.queries}{suffix}.db"
        importer = Icd10cmBuiltinImporter(held_out=held_out)
    build_seconds = None
    # an index cached by an older importer would measure names the importer no longer gives
    if not index.exists() or _outdated(index, embedder):
        started = time.perf_counter()
        build_index(index, embedder, [importer], fresh=True, meta={BUILTIN_CONTENT_KEY: str(BUILTIN_CONTENT)})
        build_seconds = time.perf_counter() - started
    service = TerminologyService(index, embedder)
    service.lookup("warm up", systems=[ICD10CM])

    results: dict[str, dict[str, list[bool]]] = {}
    latencies: dict[str, list[float]] = {}
    db = open_index(index, readonly=True)
    tops: dict[str, Candidate] = {}  # each query's top hybrid candidate, for the review table

    def hybrid(query: str) -> list[str]:
        found = service.lookup(query, systems=[ICD10CM], limit=3)
        if found:
            tops[query] = found[0]
        return [c.code for c in found]

    methods = {
        "hybrid (paperchart)": hybrid,
        "lexical only (FTS5/BM25)": lambda q: [
            c.code for c in service.lookup(q, systems=[ICD10CM], limit=3, mode="lexical")
        ],
        "semantic only (sqlite-vec)": lambda q: [
            c.code for c in service.lookup(q, systems=[ICD10CM], limit=3, mode="semantic")
        ],
        "SQL LIKE scan (peer)": lambda q: like_search(db, q),
    }
    unanswered: list[str] = []
    if args.llm_url:
        from server.pipeline.extract.llm import ChatClient, LlmCodeChooser

        client = ChatClient(args.llm_url, model=args.llm_model, dialect=args.llm_dialect, max_tokens=64)
        chooser = LlmCodeChooser(client)
        methods[f"hybrid + LLM chooser ({args.candidates})"] = lambda q: llm_choice(
            service, chooser, q, args.candidates, unanswered
        )
    for name, method in methods.items():
        hits1: list[bool] = []
        hits3: list[bool] = []
        times: list[float] = []
        per_kind: dict[str, list[bool]] = {}
        for kind, query, expected in queries:
            started = time.perf_counter()
            codes = method(query)
            times.append(time.perf_counter() - started)
            hits1.append(bool(codes) and codes[0] == expected)
            hits3.append(expected in codes[:3])
            per_kind.setdefault(kind, []).append(bool(codes) and codes[0] == expected)
        results[name] = {"top1": hits1, "top3": hits3, **{f"top1 {k}": v for k, v in per_kind.items()}}
        latencies[name] = times

    kinds = sorted({k for k, _, _ in queries})
    print(
        f"{len(queries)} held-out queries: " + ", ".join(f"{sum(1 for q in queries if q[0] == k)} {k}" for k in kinds)
    )
    header = f"{'method':<28} {'top-1':>6} {'top-3':>6} " + " ".join(f"{'top-1 ' + k:>24}" for k in kinds)
    print(header + f" {'p50 ms':>7} {'p99 ms':>7} {'lookups/s':>9}")
    for name in methods:
        row = results[name]
        times = sorted(latencies[name])
        p50 = statistics.median(times) * 1000
        p99 = times[int(len(times) * 0.99) - 1] * 1000
        print(
            f"{name:<28} {statistics.mean(row['top1']):>6.1%} {statistics.mean(row['top3']):>6.1%} "
            + " ".join(f"{statistics.mean(row['top1 ' + k]):>24.1%}" for k in kinds)
            + f" {p50:>7.1f} {p99:>7.1f} {len(times) / sum(times):>9.0f}"
        )
    if args.llm_url:
        print(f"LLM chooser {args.llm_model}: no code for {len(unanswered)} queries")
    print(f"\n{len(COMMON_MENTIONS)} common clinical mentions, coded by hand (bench/terminology.py COMMON_MENTIONS):")
    for name, method in methods.items():
        found = [method(mention) for mention, _ in COMMON_MENTIONS]
        top1 = statistics.mean(
            bool(codes) and codes[0] == code for codes, (_, code) in zip(found, COMMON_MENTIONS, strict=True)
        )
        top3 = statistics.mean(code in codes[:3] for codes, (_, code) in zip(found, COMMON_MENTIONS, strict=True))
        print(f"{name:<28} {top1:>6.1%} {top3:>6.1%}")
    print_review_table(tops, [(q, code) for _, q, code in queries])
    ours = statistics.mean(results["hybrid (paperchart)"]["top1"])
    peer = statistics.mean(results["SQL LIKE scan (peer)"]["top1"])
    speed = sum(latencies["SQL LIKE scan (peer)"]) / sum(latencies["hybrid (paperchart)"])
    print(f"\ntop-1 ratio hybrid / LIKE peer: {ours / peer if peer else float('inf'):.2f}   speed ratio: {speed:.2f}")
    size_mb = index.stat().st_size / 1e6
    concepts = db.execute("SELECT COUNT(*) FROM concept").fetchone()[0]
    built = f"built in {build_seconds:.0f} s" if build_seconds else "cached (delete it to time the build)"
    designations = db.execute("SELECT COUNT(*) FROM designation").fetchone()[0]
    print(f"index: {concepts} ICD-10-CM codes, {designations} designations, {size_mb:.0f} MB, {built}")


if __name__ == "__main__":
    main()
