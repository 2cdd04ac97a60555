"""Claims in the docs that name a test: the test exists (a renamed or deleted test leaves no orphan promise)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_reliability_md_exists():
    named = set(re.findall(r"`(test_\w+)`", (ROOT / "docs" / "reliability.md").read_text()))
    assert len(named) > 20
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    assert not named - defined, sorted(named - defined)


# A figure: a measured value with its spread ("0.92 ± 0.11", "+0.64 ± 0.17") or a speed ratio ("1.26x").
# Degenerate values (a spread of exactly 0, such as "1.00 ± 0.00") say "always" and may recur.
FIGURE = re.compile(r"[+−-]?\d+(?:\.\d+)? ± \d+(?:\.\d+)?|\b\d[\d,]*\.\d+x\b")
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))


def figures_of(path: Path) -> set[str]:
    found = set(FIGURE.findall(path.read_text()))
    return {f for f in found if not re.fullmatch(r"[+−-]?[\d.]+ ± 0(?:\.0+)?", f)}


# Equal values of different measurements (checked by hand): not one figure on two pages.
COINCIDENCES = {
    "1.000 ± 0.001": "demo.md: training accuracy; selection.md: the transformer's clean test accuracy",
    "0.983 ± 0.003": "demo.md: clean test accuracy; training_dynamics.md: the final loss's AUROC at 10 %",
    "+0.60 ± 0.20": "demo.md: the paper-mode H's tau under the shortcut; selection.md: another rule's tau",
    "0.998 ± 0.003": "demo.md: a training accuracy; verdict.md: BERT's ground truth at shortcut_0.8",
    "0.996 ± 0.004": "demo.md: a training accuracy; verdict.md: the transformer's ground truth at shortcut_0.8",
}


def test_each_figure_lives_on_one_docs_page():
    homes: dict[str, list[str]] = {}
    for page in DOC_PAGES:
        for figure in figures_of(page) - set(COINCIDENCES):
            homes.setdefault(figure, []).append(page.name)
    repeated = {figure: pages for figure, pages in homes.items() if len(pages) > 1}
    assert not repeated, f"figures on more than one page (keep one home and link to it): {repeated}"


def test_the_readme_quotes_figures_only_from_the_pages_it_links():
    readme = ROOT / "README.md"
    linked = set(re.findall(r"\(docs/([\w-]+\.md)(?:#[\w-]*)?\)", readme.read_text()))
    homes = set().union(*(figures_of(ROOT / "docs" / name) for name in linked)) if linked else set()
    orphans = figures_of(readme) - homes
    assert not orphans, f"README figures with no home on a docs page it links to: {sorted(orphans)}"


def test_the_verdict_page_shows_what_the_study_wrote():
    """Every `mean ± sd` on docs/verdict.md is a {mean, sd} of the study's reports in docs/results."""
    import json

    produced = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if {"mean", "sd"} <= set(node) and isinstance(node["mean"], float):
                for digits in (2, 3):
                    produced.add(f"{abs(node['mean']):.{digits}f} ± {node['sd']:.{digits}f}")  # the sign is read apart
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in ("kind.json", "kind_tuning.json"):  # seeds 2 to 6, and the seeds the thresholds were chosen on
        walk(json.loads((ROOT / "docs" / "results" / name).read_text()))
    page = (ROOT / "docs" / "verdict.md").read_text()
    shown = {f.lstrip("+") for f in re.findall(r"\d+\.\d+ ± \d+\.\d+", page)}
    missing = shown - produced
    assert not missing, f"docs/verdict.md shows figures docs/results does not have: {sorted(missing)}"
