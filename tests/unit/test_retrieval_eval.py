"""The eval's labels (bench/retrieval_eval.py): what is relevant to a section's title."""

from __future__ import annotations

from bench.retrieval_eval import read_page, relevant_sections, trigrams

A = "log compaction keeps the latest record of every key while the cleaner rewrites segments"
B = "consumer groups split the partitions of a topic among the members of the group evenly"


def test_a_chunk_from_one_section_is_relevant_to_it_alone():
    sections = {"A": trigrams(A), "B": trigrams(B)}

    assert relevant_sections(A, sections) == {"A"}
    assert relevant_sections(A[:60], sections) == {"A"}


def test_a_chunk_mostly_from_one_section_is_relevant_to_that_one():
    sections = {"A": trigrams(A), "B": trigrams(B)}

    assert relevant_sections(A + " " + B[:30], sections) == {"A"}


def test_a_chunk_split_evenly_between_sections_is_relevant_to_neither():
    sections = {"A": trigrams(A), "B": trigrams(B)}

    assert relevant_sections(A + " " + B, sections) == set()


def test_common_words_in_another_order_are_not_relevance():
    sections = {"A": trigrams(A)}

    assert relevant_sections("the key of the record is the latest of every log", sections) == set()


PAGE = """<html><body><div class="related" role="navigation"><a>Compaction HOWTO</a>
next previous index modules python documentation</div>
<div class="body" role="main"><section id="c"><h1>Compaction<a class="headerlink">¶</a></h1>
<p>Intro words of the page about the log.</p>
<div class="toctree-wrapper"><ul><li>Segments and the cleaner thread</li></ul></div>
<section id="s"><h2>Segments</h2><p>A segment is a file of records in order.</p></section>
</section></div><div class="footer">copyright the python software foundation</div>
</body></html>"""


def test_a_sections_own_text_leaves_out_its_subsections_and_permalinks():
    page = read_page("p.html", PAGE)

    assert set(page.sections) == {"Compaction", "Segments"}
    assert trigrams("intro words of the page") <= page.sections["Compaction"]
    assert not trigrams("a segment is a file") & page.sections["Compaction"]
    assert trigrams("a segment is a file of records") <= page.sections["Segments"]


def test_navigation_is_what_only_the_pages_boilerplate_holds():
    page = read_page("p.html", PAGE)

    assert trigrams("next previous index modules") <= page.navigation
    assert trigrams("segments and the cleaner thread") <= page.navigation
    assert not trigrams("a segment is a file") & page.navigation
