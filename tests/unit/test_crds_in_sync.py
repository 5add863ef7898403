"""crds/ holds exactly what the API types generate."""

from pathlib import Path

import pytest

from nofx.api import crdgen

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["crds", "charts/nofx/crds"])
def test_crds_match_the_api_types(folder: str) -> None:
    diffs = crdgen.differences(ROOT / folder)
    assert not diffs, f"{folder}/ is out of date with operator/nofx/api: run `make crds`\n" + (
        "".join(diffs)
    )


def test_the_chart_ships_exactly_the_generated_crds() -> None:
    names = sorted(path.name for path in (ROOT / "charts/nofx/crds").iterdir())
    assert names == sorted(crdgen.render())


def test_check_fails_with_a_diff_after_a_hand_edit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0

    edited = tmp_path / "runs.nofx.dev.yaml"
    edited.write_text(edited.read_text().replace("- nxr", "- nxrun"))
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "-    - nxrun\n" in message and "+    - nxr\n" in message
    assert "run `make crds`" in message


def test_the_chart_ships_the_admission_policies_of_policies_folder() -> None:
    source = {p.name: p.read_text() for p in (ROOT / "policies").glob("*.yaml")}
    source.pop("kustomization.yaml")
    copies = {p.name: p.read_text() for p in (ROOT / "charts/nofx/files/policies").glob("*.yaml")}
    assert copies == source, "charts/nofx/files/policies differs from policies/: run `make crds`"
