from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from provline.producers import Lineage
from provline.producers.digest import file_sha256, manifest, merkle_root
from provline.schemas import default_catalog
from tests.helpers import decoded, memory_lineage, sent


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


FILES = {"a.csv": b"x,y\n1,2\n" * 1000, "sub/b.csv": b"x,y\n3,4\n", "c.bin": bytes(range(256)) * 50}


def test_dataset_digest_ignores_creation_order(tmp_path: Path) -> None:
    forward = write_tree(tmp_path / "one", FILES)
    backward = write_tree(tmp_path / "two", dict(reversed(list(FILES.items()))))
    assert merkle_root(manifest(forward)) == merkle_root(manifest(backward))
    entries = manifest(forward)
    assert merkle_root(list(reversed(entries))) == merkle_root(entries)


def test_file_digest_ignores_chunk_size(tmp_path: Path) -> None:
    path = write_tree(tmp_path, FILES) / "c.bin"
    assert {file_sha256(path, chunk_bytes=size) for size in (1, 7, 4096, 1 << 20)} == {file_sha256(path)}


def test_one_changed_byte_changes_the_digest(tmp_path: Path) -> None:
    original = merkle_root(manifest(write_tree(tmp_path / "one", FILES)))
    changed = dict(FILES, **{"sub/b.csv": b"x,y\n3,5\n"})
    assert merkle_root(manifest(write_tree(tmp_path / "two", changed))) != original


def test_renamed_file_changes_the_digest(tmp_path: Path) -> None:
    original = merkle_root(manifest(write_tree(tmp_path / "one", FILES)))
    renamed = {("d.csv" if k == "a.csv" else k): v for k, v in FILES.items()}
    assert merkle_root(manifest(write_tree(tmp_path / "two", renamed))) != original


def decoded_events(lineage: Lineage) -> list[tuple[str, dict]]:
    catalog = default_catalog()
    return [(d.record, d.value) for d in (catalog.decode(m) for m in sent(lineage.emitter))]


def test_run_records_start_completion_dataset_model_and_chain(tmp_path: Path) -> None:
    data = write_tree(tmp_path / "data", FILES)
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    lineage = memory_lineage("unit")
    with lineage.run("train", stage="training", params={"C": 0.5, "layers": [3, 2]}, seed=11) as run:
        digest = run.use_dataset(data, name="churn", license="CC-BY-4.0")
        run.log_metric("auc", 0.9)
        run.register_model(artifact, name="churn", version="1", framework="numpy")
    lineage.deploy("churn", "1", endpoint="/predict")

    events = decoded_events(lineage)
    assert [kind for kind, _ in events] == ["RunEvent", "DatasetVersion", "ModelVersion", "RunEvent", "Deployment"]
    started, dataset, model, completed, deployment = (v for _, v in events)
    assert started["state"] == "STARTED" and completed["state"] == "COMPLETED"
    assert completed["inputs"] == [digest] and completed["outputs"] == ["churn@1"]
    assert completed["hyperparameters"] == {"C": "0.5", "layers": json.dumps([3, 2])}
    assert completed["seeds"] == {"seed": 11} and completed["metrics"] == {"auc": 0.9}
    assert completed["environment"]["python"] == platform.python_version()
    assert dataset["digest"] == digest and dataset["license"] == "CC-BY-4.0"
    assert len(dataset["files"]) == 3
    assert model["artifact_sha256"] == file_sha256(artifact) and model["run_id"] == started["run_id"]
    assert model["datasets"] == [digest]
    assert deployment["action"] == "DEPLOY" and deployment["endpoint"] == "/predict"
    hashes = [v["hash"] for _, v in events]
    assert [v["prev_hash"] for _, v in events] == [None, *hashes[:-1]]


def test_failed_run_records_the_error_and_reraises() -> None:
    lineage = memory_lineage()
    with pytest.raises(ZeroDivisionError), lineage.run("train") as outer:
        with lineage.run("inner") as inner:
            assert inner.parent_run_id == outer.run_id
        1 / 0  # noqa: B018
    last = decoded_events(lineage)[-1][1]
    assert last["state"] == "FAILED"
    assert last["error"] == {"type": "ZeroDivisionError", "message": "division by zero"}


def test_without_a_broker_the_library_is_a_no_op_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    lineage = Lineage()
    with lineage.run("train"):
        pass
    assert lineage.close() is True
    assert "no broker configured" in caplog.text


def test_the_run_owner_setting_is_recorded_with_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_RUN__OWNER", "ada")
    monkeypatch.setenv("PROVLINE_EMITTER__TRANSPORT", "memory")
    lineage = Lineage()
    with lineage.run("train"):
        pass
    [(_, started), (_, completed)] = decoded(lineage.emitter)
    assert completed["environment"]["env_vars"]["PROVLINE_RUN__OWNER"] == "ada"
