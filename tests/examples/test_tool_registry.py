"""examples/tool-registry runs as documented: the batch way and the expand/contract way."""

from __future__ import annotations

from tests.examples import load_example


def test_the_batch_way_rolls_the_buggy_converter_back_and_completes_with_the_fixed_one(tmp_path):
    result = load_example("tool-registry", "batch_migration").main(tmp_path)
    assert result["first"] == "rolled_back" and result["restored"] > 0 and result["restored_exactly"]
    assert result == {**result, "second": "completed", "written": 1000, "failed": 0}


def test_the_expand_contract_way_finds_the_bug_by_field_and_contracts_clean(tmp_path):
    result = load_example("tool-registry", "expand_contract").main(tmp_path)
    assert list(result["differing_fields"]) == ["", "$.inputSchema.required[*]"]
    assert result["differing"] == result["differing_fields"][""] > 0
    assert result["reconciled"] and result["differing_after_backfill"] == 0
    assert result["status"] == "completed" and result["v2_rows"] == result["v1_rows"] == 1001
