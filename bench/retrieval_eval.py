"""`make eval`: retrieval quality of the project's chunks on documentation no one here wrote.

Corpus: the Python 3.11 documentation, Sphinx-generated HTML, from the Debian package
python3.11-doc, fetched with ``apt-get download`` and unpacked into .work/eval (no root,
nothing installed). Pages: the tutorial, the HOWTOs and the FAQ.

Labels: every section of a page's main content is a query, its heading's text; what is
relevant to it is that section's own text (its heading and paragraphs, not its
subsections'). Sections with less than a paragraph of their own (under 30 word
trigrams: a page title over its subsections, say) are containers, not queries. A chunk
is relevant to a section when more than half of the chunk's word trigrams occur in that
section's own text (see ``relevant_sections``; a trigram repeats rarely by chance, so
the share says where the chunk's text comes from).

Systems, with the same model and an exact cosine search over all of a system's chunks:
  - streamrag: the chunk stage the ingest job runs (jobs.chunking.stage.ChunkStage);
  - baseline: the page's text by BeautifulSoup ``get_text``, 1,000 characters a chunk with
    200 characters of overlap.

Figures: recall@1 and recall@5 (a relevant chunk among the first k), MRR@10; the share of
chunks that are mostly navigation or table of contents (their trigrams come from the page
outside its ``role="main"`` element, a toctree or a local table of contents, and not
from the main text), the share under 25 tokens, chunks over the token budget, chunks the
model would truncate, and whether a second run gives identical chunks. Ends with one
JSON line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bs4 import BeautifulSoup
from bs4.element import Tag

from jobs.chunking.chunker import get_encoding
from jobs.chunking.stage import ChunkStage
from streamrag.config import PROJECT_ROOT, ChunkingConfig
from streamrag.models import ModelTokenizer, encode, load_model, resolve_model
from streamrag.records import DocumentEvent, EmbedHeading, Origin, model_input

PACKAGE = "python3.11-doc"
DOCS = Path("usr/share/doc/python3.11/html")
SECTIONS = ("tutorial", "howto", "faq")
WORD = re.compile(r"\w+")
TINY_TOKENS = 25
MIN_SECTION_TRIGRAMS = 30  # a section with less text of its own is only a container


@dataclass
class Page:
    name: str
    html: str
    sections: dict[str, set[tuple[str, ...]]]  # heading -> trigrams of its own text
    navigation: set[tuple[str, ...]]  # trigrams only the page's boilerplate has


@dataclass
class System:
    name: str
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (page, text)
    inputs: list[str] = field(default_factory=list)  # what the model is given


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def relevant_sections(chunk: str, sections: dict[str, set[tuple[str, ...]]]) -> set[str]:
    """The sections that more than half of the chunk's trigrams come from."""
    grams = trigrams(chunk)
    if not grams:
        return set()
    return {title for title, own in sections.items() if len(grams & own) / len(grams) > 0.5}


def corpus(work: Path) -> list[Page]:
    """The pages, fetched and unpacked on first use."""
    root = work / DOCS
    if not root.is_dir():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True, capture_output=True)
        (deb,) = work.glob(f"{PACKAGE}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work)], check=True)
    pages = []
    for folder in SECTIONS:
        for path in sorted((root / folder).glob("*.html")):
            if path.name != "index.html":
                pages.append(read_page(f"{folder}/{path.name}", path.read_text(encoding="utf-8")))
    return pages


def read_page(name: str, html: str) -> Page:
    soup = BeautifulSoup(html, "html.parser")
    main = soup.find(role="main")
    assert isinstance(main, Tag), name
    for link in main.select("a.headerlink"):
        link.decompose()
    boiler = [t.get_text(" ") for t in main.select(".toctree-wrapper, nav.contents")]
    for tag in main.select(".toctree-wrapper, nav.contents"):
        tag.decompose()
    sections = {}
    for section in main.find_all("section"):
        heading = section.find(re.compile(r"^h[1-6]$"))
        if not isinstance(heading, Tag):
            continue
        own = " ".join(
            s for s in section.find_all(string=True)
            if not any(p.name == "section" and p is not section for p in s.parents
                       if _inside(p, section))
        )  # fmt: skip
        title = " ".join(heading.get_text(" ").split())
        if title and title not in sections:
            sections[title] = trigrams(own)
    main_grams = trigrams(main.get_text(" "))
    main.decompose()
    navigation = (trigrams(soup.get_text(" ")) | trigrams(" ".join(boiler))) - main_grams
    return Page(name, html, sections, navigation)


def _inside(parent: Tag, section: Tag) -> bool:
    """True when ``parent`` lies inside ``section`` (so a nested section's text is not the
    outer section's own)."""
    return any(p is section for p in parent.parents)


def streamrag_chunks(pages: list[Page], stage: ChunkStage) -> tuple[System, list[str]]:
    """The stage's chunks of every page, and each chunk's heading path."""
    system, paths = System("streamrag"), []
    for page in pages:
        event = DocumentEvent(
            doc_id=page.name,
            version=1,
            source="eval",
            origin=Origin("eval", 0, 0),
            text=page.html,
            content_type="html",
        )
        for span in stage.spans(event):
            system.chunks.append((page.name, span.text))
            system.inputs.append(
                model_input(span.text, span.heading_path, stage.config.embed_heading)
            )
            paths.append(span.heading_path)
    return system, paths


def baseline_chunks(pages: list[Page], size: int = 1000, overlap: int = 200) -> System:
    system = System("baseline")
    for page in pages:
        text = " ".join(BeautifulSoup(page.html, "html.parser").get_text(" ").split())
        for start in range(0, max(1, len(text) - overlap), size - overlap):
            system.chunks.append((page.name, text[start : start + size]))
    system.inputs = [text for _, text in system.chunks]
    return system


def retrieval(
    system: System,
    pages: list[Page],
    queries: list[tuple[str, str]],
    query_vectors: np.ndarray,
    vectors: np.ndarray,
) -> dict[str, float]:
    """recall@1, recall@5 and MRR@10 of ``system`` over ``queries`` (page, heading)."""
    by_page = {p.name: p for p in pages}
    labels = [relevant_sections(text, by_page[page].sections) for page, text in system.chunks]
    hits1 = hits5 = 0
    reciprocal = 0.0
    scores = query_vectors @ vectors.T
    for q, (page, heading) in enumerate(queries):
        top = np.argsort(-scores[q], kind="stable")[:10]
        ranks = [
            r for r, i in enumerate(top, 1) if system.chunks[i][0] == page and heading in labels[i]
        ]
        hits1 += bool(ranks and ranks[0] == 1)
        hits5 += bool(ranks and ranks[0] <= 5)
        reciprocal += 1 / ranks[0] if ranks else 0.0
    n = len(queries)
    return {"recall_at_1": hits1 / n, "recall_at_5": hits5 / n, "mrr_at_10": reciprocal / n}


def shares(system: System, pages: list[Page], max_tokens: int) -> dict[str, float]:
    by_page = {p.name: p for p in pages}
    enc = get_encoding("cl100k_base")
    navigation = tiny = over = 0
    for page, text in system.chunks:
        grams = trigrams(text)
        if grams and len(grams & by_page[page].navigation) / len(grams) > 0.5:
            navigation += 1
        count = len(enc.encode_ordinary(text))
        tiny += count < TINY_TOKENS
        over += count > max_tokens
    n = len(system.chunks)
    return {
        "navigation_chunk_share": navigation / n,
        "tiny_chunk_share": tiny / n,
        "over_budget": over,
    }


def main() -> None:
    started = time.monotonic()
    config = ChunkingConfig()
    model = resolve_model("bundled")
    pages = corpus(PROJECT_ROOT / ".work" / "eval")
    queries = [
        (p.name, heading)
        for p in pages
        for heading, own in p.sections.items()
        if len(own) >= MIN_SECTION_TRIGRAMS
    ]
    stage = ChunkStage.for_model(config, model)
    ours, paths = streamrag_chunks(pages, stage)
    rerun, _ = streamrag_chunks(pages, ChunkStage.for_model(config, model))
    base = baseline_chunks(pages)
    tokenizer = ModelTokenizer(model)
    truncated = sum(not tokenizer.fits(text) for text in ours.inputs)
    print(
        f"eval: {len(pages)} pages, {len(queries)} queries, {len(ours.chunks)} chunks"
        f" (baseline {len(base.chunks)})",
        file=sys.stderr,
        flush=True,
    )

    encoder = load_model(model, torch_threads=2)
    query_vectors = np.asarray(encode(encoder, [h for _, h in queries]), np.float32)
    figures: dict[str, float | int | bool] = {}
    for system in (ours, base):
        vectors = np.asarray(encode(encoder, system.inputs), np.float32)
        got = retrieval(system, pages, queries, query_vectors, vectors)
        got.update(shares(system, pages, stage.chunker.max_tokens))
        prefix = "" if system is ours else "baseline_"
        figures.update(
            {prefix + k: (round(v, 4) if isinstance(v, float) else v) for k, v in got.items()}
        )
    # The other ways to give the model the heading path (chunking.embed_heading), on the
    # same chunks: the default is the best of these.
    others: tuple[EmbedHeading, ...] = ("none", "section", "path")
    for mode in (m for m in others if m != config.embed_heading):
        variant = System(
            mode,
            ours.chunks,
            [
                model_input(text, path, mode)
                for (_, text), path in zip(ours.chunks, paths, strict=True)
            ],
        )
        vectors = np.asarray(encode(encoder, variant.inputs), np.float32)
        got = retrieval(variant, pages, queries, query_vectors, vectors)
        figures.update({f"embed_heading_{mode}_{k}": round(v, 4) for k, v in got.items()})
    figures.update({
        "pages": len(pages), "queries": len(queries), "chunks": len(ours.chunks),
        "baseline_chunks": len(base.chunks), "truncated_by_model": truncated,
        "identical_rerun": ours.chunks == rerun.chunks,
        "embed_heading": config.embed_heading, "max_tokens": stage.chunker.max_tokens,
        "seconds": round(time.monotonic() - started, 1),
    })  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
