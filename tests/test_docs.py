"""The documentation is consistent with the repository: docs/benchmarks.md is what
benchmarks/make_docs.py makes of benchmarks/results/*.json today (so a new measurement without a
regenerated page fails here), every results file is on that page, the template writes no number by hand,
and every relative link in README.md and docs/*.md points to a file that exists."""
import copy
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _load_make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "benchmarks" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_docs = _load_make_docs()


@pytest.fixture(scope="module")
def generated():
    """(the page as make_docs renders it now, the Results it read)."""
    results = make_docs.Results()
    return make_docs.render(make_docs.TEMPLATE.read_text(), results), results


def test_benchmarks_page_is_generated_from_the_results_files(generated):
    page, _ = generated
    assert make_docs.PAGE.read_text() == page, (
        "docs/benchmarks.md differs from what benchmarks/make_docs.py makes of benchmarks/results/*.json: "
        "run `python benchmarks/make_docs.py` (and edit docs/benchmarks.template.md, not the page)")


def test_every_results_file_is_on_the_benchmarks_page(generated):
    _, results = generated
    assert make_docs.unused_results(results) == [], "a results file with no section in docs/benchmarks.template.md"


def test_the_page_follows_a_changed_measurement(generated):
    """A number in a results file reaches the page: change one, render again, and the page changes there."""
    page, results = generated
    changed = make_docs.Results()
    changed.cache = copy.deepcopy(results.cache)
    row = next(r for r in changed.cache["overhead.json"]["rows"] if r["library"] == "sdekit")
    row["us_per_step"] = 987654.25
    new_page = make_docs.render(make_docs.TEMPLATE.read_text(), changed)
    assert new_page != page and "987654.2" in new_page and "987654.2" not in page


def _prose(text: str) -> str:
    """``text`` without comments, code, placeholders and link targets: what a reader takes as prose."""
    for pattern in (r"<!--.*?-->", r"```.*?```", r"`[^`\n]*`", r"\{\{[^{}\n]+\}\}", r"\]\([^)\s]*\)"):
        text = re.sub(pattern, " ", text, flags=re.DOTALL)
    return text


def test_the_template_writes_no_number_by_hand():
    """Numbers in the template's prose come from placeholders; digits inside names (p90, W2, dpmpp_2m)
    and code spans are not numbers."""
    prose = _prose(make_docs.TEMPLATE.read_text())
    numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?(?![\w])", prose)
    assert numbers == [], f"hand-written numbers in docs/benchmarks.template.md: {numbers}"


def test_placeholders_fail_loudly(generated):
    _, results = generated
    with pytest.raises(KeyError, match="no_such_name"):
        make_docs.render("{{no_such_name}}", results)
    with pytest.raises(KeyError, match="no key 'nope'"):
        make_docs.render("{{overhead.json:settings/nope}}", results)
    with pytest.raises(KeyError, match="rows with library == 'sdekit', need exactly one"):
        make_docs.render("{{overhead.json:rows/library=sdekit}}", results)
    with pytest.raises(ValueError, match="format spec"):
        make_docs.render("{{overhead.json:settings/net_us_per_call}}", results)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        make_docs.render("{{missing.json:a}}", results)
    assert make_docs.render("{{overhead.json:settings/net_us_per_call:.1f}} us", results).endswith(" us")


LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]\n]+\]:\s*(\S+)", re.MULTILINE)


def broken_links(page: Path) -> list[str]:
    """Relative link targets in ``page`` (markdown links, images, reference definitions; code excluded)
    that name no existing file or folder."""
    text = re.sub(r"```.*?```|`[^`\n]*`", " ", page.read_text(), flags=re.DOTALL)
    broken = []
    for match in LINK.finditer(text):
        target = (match.group(1) or match.group(2)).split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # an anchor on the same page, or a URL (http:, mailto:, ...)
        if not (page.parent / target).exists():
            broken.append(target)
    return broken


def test_link_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [anchor](#top) [web](https://example.org/x) ![img](gone.png)\n"
                    "`[code](nowhere.md)` [bad](there.md#sec) [missing](sub/none.md)\n[ref]: also_gone.md\n")
    assert broken_links(page) == ["gone.png", "sub/none.md", "also_gone.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(page):
    assert broken_links(page) == [], f"broken relative links in {page.relative_to(ROOT)}"
