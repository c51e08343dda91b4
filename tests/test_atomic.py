"""Files replaced whole: the new content lands, the temporary file never stays behind."""

from __future__ import annotations

import pytest

from crossfade.atomic import replace_file


def test_a_file_is_replaced_whole_and_its_folder_made(tmp_path):
    target = tmp_path / "conf.d" / "m.conf"
    replace_file(target, b"first")
    replace_file(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["m.conf"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "m.conf"
    replace_file(target, b"old")
    with pytest.raises(TypeError):
        replace_file(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.conf"]
