"""`nas show` views: the stage table and its text rendering."""

from __future__ import annotations

from search_spaces import complexity, zoo
from search_spaces.describe import human, render_text, stage_table


def test_stage_table_rows_and_totals():
    spec = zoo.get("resnet56")
    table = stage_table(spec, 32)
    assert [r["name"] for r in table] == ["stem", "stage1", "stage2", "stage3", "head"]
    assert [r["skip"] for r in table] == [None, "zero_pad", "zero_pad", "zero_pad", None]
    assert [r["resolution"] for r in table[1:4]] == [(32, 32), (16, 16), (8, 8)]
    total = complexity(spec, 32)
    assert sum(r["params"] for r in table) == total.params == 853_018
    assert sum(r["flops_share"] for r in table) == __import__("pytest").approx(1.0)


def test_render_text_shows_id_stages_and_totals():
    spec = zoo.get("resnext50_32x4d")
    text = render_text(spec, 224)
    assert spec.arch_id in text and "resnext50_32x4d" in text
    assert "bottleneck x4 g32 inner 128" in text
    assert "params 25,028,904" in text
    assert text.count("stage") == 4


def test_human_numbers():
    assert human(25_557_032) == "25.56M"
    assert human(4_089_184_256) == "4.09G"
    assert human(650) == "650"
