"""x2ct.eval.paired: the radiograph and move parts of eval/results.sh against the same cases
of the lumbar part (matched by method and case, not by row order)."""

import pytest

from x2ct.eval.paired import main, paired_rows, paired_table, read_cases


def _write(path, rows, columns=("method", "case", "psnr_3d", "ssim_3d")):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(columns)] + [",".join(map(str, r)) for r in rows]) + "\n")


@pytest.fixture
def results(tmp_path):
    # lumbar: four cases; the radiograph part the first two, listed in another order
    _write(tmp_path / "lumbar" / "cases.csv", [
        ("ldm", "phantom_1", 30.0, 0.8), ("ldm", "phantom_2", 26.0, 0.7),
        ("ldm", "phantom_3", 10.0, 0.1), ("ldm", "phantom_4", 10.0, 0.1),
        ("mean-ct", "phantom_1", 25.0, 0.6), ("mean-ct", "phantom_2", 23.0, 0.6),
        ("mean-ct", "phantom_3", 1.0, 0.1), ("mean-ct", "phantom_4", 1.0, 0.1)])
    _write(tmp_path / "radiograph" / "cases.csv", [
        ("mean-ct", "phantom_2", 23.0, 0.6), ("ldm", "phantom_2", 25.0, 0.65),
        ("ldm", "phantom_1", 28.0, 0.75), ("mean-ct", "phantom_1", 25.0, 0.6)])
    return tmp_path


def test_pairs_by_case_not_by_order(results):
    rows = {(r.part, r.method): r for r in paired_rows(results)}
    assert set(rows) == {("radiograph", "ldm"), ("radiograph", "mean-ct")}  # no move folder
    ldm = rows["radiograph", "ldm"]
    # by hand: (28 + 25) / 2 against (30 + 26) / 2 of the same two cases, not all four
    assert ldm.n == 2
    assert ldm.part_mean == pytest.approx(26.5)
    assert ldm.reference_mean == pytest.approx(28.0)
    assert ldm.difference == pytest.approx(-1.5)
    assert rows["radiograph", "mean-ct"].difference == pytest.approx(0.0)
    ssim = {r.method: r for r in paired_rows(results, metric="ssim_3d")}
    assert ssim["ldm"].difference == pytest.approx(0.70 - 0.75)
    table = paired_table(paired_rows(results))
    assert "| radiograph | ldm | 2 | 26.50 | 28.00 | -1.50 |" in table
    ssim_table = paired_table(paired_rows(results, metric="ssim_3d"), metric="ssim_3d", digits=3)
    assert "| radiograph | ldm | 2 | 0.700 | 0.750 | -0.050 |" in ssim_table


def test_refuses_a_case_the_reference_lacks(results):
    _write(results / "move" / "cases.csv", [("ldm", "phantom_9", 20.0, 0.5)])
    with pytest.raises(ValueError, match=r"move.*phantom_9 not in .*lumbar"):
        paired_rows(results)


def test_refuses_a_missing_column_or_reference(results, tmp_path_factory):
    with pytest.raises(ValueError, match=r"lumbar.cases\.csv: no column dice_bone"):
        read_cases(results / "lumbar" / "cases.csv", "dice_bone")
    with pytest.raises(FileNotFoundError, match="reference part"):
        paired_rows(tmp_path_factory.mktemp("empty"))


def test_cli_prints_the_table_and_names_a_bad_metric(results, capsys):
    main([str(results)])
    assert "| radiograph | ldm | 2 | 26.50 | 28.00 | -1.50 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([str(results), "--metric", "nope"])
    assert e.value.code == 2
    assert "no column nope" in capsys.readouterr().err
