"""README's headline numbers appear in their sources, and README's relative links resolve.

Each entry of ``HEADLINES`` is (README snippet, source file, source snippet): the snippet must be in
README's "Headline numbers" section, the source snippet in the source file, and every number of the
README snippet in the source snippet (so an entry cannot pair a README number with another one).
Whitespace runs are compared as one space and "x" / "×" as the same sign, since README wraps lines
and ``benchmarks/RESULTS.md`` writes ratios both ways. Editing a listed README number without its
source (or the source without README) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = "benchmarks/RESULTS.md"

# (README snippet in "Headline numbers", source file, snippet of that source)
HEADLINES = [
    # SAE step speed-up: the two CPU runs of benchmarks/sae_step.py
    ("4.95–5.11× faster than a dense-mask step", RESULTS,
     ("**dense-mask / ours** (goal >= 2.5x) | **5.11x", "gave 4.95x and 1.45x")),
    ("1.35–1.45× the encoder GEMM", RESULTS,
     ("**ours / encoder GEMM** (goal <= 1.5x) | **1.35x", "gave 4.95x and 1.45x")),
    ("2.43× faster (goal ≥ 2.5×)", RESULTS, "dense-mask step 0.026 s | 2.43× faster | ≥ 2.5×"),
    ("2.67× the GEMM (goal ≤ 1.5×)", RESULTS, "GEMM 0.004 s | 2.67× the GEMM | ≤ 1.5×"),
    # feature extraction overhead
    ("overhead over bare `encode_image`: ×1.012 (CPU)", RESULTS, "| **ratio** | **1.012** |"),
    ("×1.111 on an NVIDIA H200 (goal ≤ 1.10", RESULTS, "| 770.0 img/s | 1.111 | ≤ 1.10"),
    # attribution speed-up and error
    ("618× faster cold, 708× warm on the CPU", RESULTS, "speed-up: **618x** cold, 708x warm"),
    ("max relative error 6.5e-7", RESULTS, "prompts [0, 500, 999]: **6.46e-07**"),
    ("(137× for the first call in a process: goal ≥ 300× missed cold)", RESULTS,
     "| 0.18 s | autograd, T backward passes: 25.3 s | 137× | ≥ 300× — missed cold |"),
    ("H200 4450× warm", RESULTS, "| 0.01 s | 25.3 s | 4450× | met |"),
    ("error 1.2e-6", RESULTS, "| max relative error, closed form vs autograd (float32) | 1.22e-6 |"),
    # sandbox SAE
    ("held-out FVU 0.045, 0.4 % dead latents", RESULTS, "held-out FVU 0.045, cos 0.981, 6 of 1536 latents never active (0.4 %)"),
    # labeling shares and basis diversity (independent-world labeler, seeds 40-44)
    ("0.95 / 0.93 / 0.88 / 0.98 / 0.69 of the time", RESULTS,
     "shares named object 0.95 ± 0.01, colour 0.93 ± 0.01, background 0.88 ± 0.02, written word "
     "0.98 ± 0.01, tint 0.69 ± 0.20"),
    ("held-out seeds 40–44, independent-world labeler", RESULTS,
     "## Labeling with the independent-world labeler (notebook 02 defaults, held-out seeds 40–44)"),
    ("SAE 68.6 ± 1.6 vs neurons 49.4 ± 1.3 vs PCA 40.2 ± 1.4", RESULTS,
     "unique labels SAE 68.6 ± 1.6, neuron 49.4 ± 1.3, PCA 40.2 ± 1.4"),
    # faithfulness table rows recorded in RESULTS.md (renderer version 2)
    ("| Act x Grad | 0.616 ± 0.003 | 0.627 ± 0.002 | 0.636 ± 0.002 | 0.734 ± 0.003 |", RESULTS,
     "Act×Grad deletion local / global / random 0.616 / 0.627 / 0.636, insertion 0.734"),
    ("| Random | 0.691 ± 0.002 | 0.684 ± 0.002 | 0.682 ± 0.002 | 0.645 ± 0.004 |", RESULTS,
     "Random 0.691 / 0.684 / 0.682, 0.645"),
    ("(version 1 models, ≥ 8.4 SEM on seeds 0–2", RESULTS,
     "was 15.3 SEM (seed 0), 8.4 (seed 1) and 15.8 (seed 2)"),
]

# a number not glued to a word ("H200", "ViT-B-32") and not an SEM after "±"
_NUMBER = re.compile(r"(?<![\w.±-])(?<!± )\d+(?:\.\d+)?(?:e-?\d+)?")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("×", "x")


def _headline_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Headline numbers.*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, 'README has no "## Headline numbers" section'
    return _norm(match.group(0))


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(text))


def _shown_as(readme_number: str, source_numbers: set[str]) -> bool:
    """README's number equals a source number rounded to README's precision (6.5e-7 for 6.46e-07)."""
    value = float(readme_number)
    mantissa = readme_number.split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    scale = 10.0 ** int(readme_number.split("e")[1]) if "e" in readme_number else 1.0
    for s in source_numbers:
        if round(float(s) / scale, decimals) == round(value / scale, decimals):
            return True
    return False


def _snippets(source_snippet) -> tuple[str, ...]:
    return (source_snippet,) if isinstance(source_snippet, str) else tuple(source_snippet)


def test_enough_headline_numbers_are_checked():
    numbers = set().union(*(_numbers(r) for r, _, _ in HEADLINES))
    assert len(numbers) >= 8


@pytest.mark.parametrize("readme_snippet,source,source_snippet", HEADLINES,
                         ids=[f"{i}:{r[:40]}" for i, (r, _, _) in enumerate(HEADLINES)])
def test_headline_number_has_its_source(readme_snippet, source, source_snippet):
    section = _headline_section()
    assert _norm(readme_snippet) in section, f"README's headline numbers no longer say {readme_snippet!r}"
    path = ROOT / source
    assert path.is_file(), f"source {source} is missing"
    source_text = _norm(path.read_text(encoding="utf-8"))
    for snippet in _snippets(source_snippet):
        assert _norm(snippet) in source_text, \
            f"{source} no longer says {snippet!r} (README: {readme_snippet!r})"
    # every number the README snippet shows (ranges: both ends) is one its source snippets show,
    # at README's precision, so an entry cannot pair a README number with some other source line
    source_numbers = set().union(*(_numbers(_norm(s)) for s in _snippets(source_snippet)))
    missing = [n for n in _numbers(_norm(readme_snippet)) if not _shown_as(n, source_numbers)]
    assert not missing, f"README snippet {readme_snippet!r} has {missing} not in {source_snippet!r}"


def _relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    targets += re.findall(r"""(?:src|href)=["']([^"']+)["']""", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I) and not t.startswith("#")]


def test_readme_relative_links_resolve():
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert links, "no relative link found in README (the parser is broken?)"
    broken = [t for t in links if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not broken, f"README links to missing files: {broken}"


def test_the_checker_notices_an_edited_number():
    section = _headline_section()
    edited = section.replace(_norm("4.95–5.11×"), _norm("4.7–5.1×"))
    assert _norm(HEADLINES[0][0]) not in edited
    sources = set().union(*(_numbers(_norm(s)) for s in _snippets(HEADLINES[0][2])))
    assert not _shown_as("4.7", sources)
    assert _shown_as("6.5e-7", {"6.46e-07"}) and not _shown_as("6.4e-7", {"6.46e-07"})
