"""`tl-predict` with the champion of a real registry, a version, a run id and a .keras file; errors; JSON."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline.cli.predict import as_json, error_lines, main, model_uri, render_text
from pipeline.model.export import save_model
from pipeline.model.model_card import ModelCard
from pipeline.serving.predict import ClassScore, Prediction
from pipeline.tracking import lifecycle, models
from tests.conftest import register_champion

NAMES = ["zero", "one", "two"]
CARD = ModelCard(class_names=tuple(NAMES), stored_shape=(8, 8))


def _classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    pixels = keras.Input((8, 8, 3), name="pixels")
    features = keras.layers.Dropout(0.3)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(pixels)))
    return keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(features), name="classifier")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A registry holding v1 (logged before model cards: names only in its evaluation report) and v2 (with
    its card, the champion); a .keras copy; a data report; two PNGs."""
    root = tmp_path_factory.mktemp("predict")
    store = f"sqlite:///{root / 'mlflow.db'}"
    model = _classifier()
    runs = []
    for value, metadata in ((0.5, None), (0.9, CARD.to_metadata())):
        with lifecycle.tracked_run(tracking_uri=store, experiment="e", artifact_dir=root / "artifacts") as run:
            uri = models.log_keras_model(
                run, model, name="model", pip_requirements=["keras"], class_names=NAMES, metadata=metadata
            )
            register_champion(run, model_uri=uri, name="clf", value=value)
            (root / "classification_report.json").write_text(json.dumps({"class_names": NAMES}))
            run.log_artifact(root / "classification_report.json", "evaluation")
        runs.append(run.run_id)
    save_model(model, root / "model.keras")
    (root / "data_report.json").write_text(json.dumps({"image_shape": [8, 8], "class_names": NAMES}))
    images = np.random.default_rng(3).integers(0, 256, (2, 8, 8)).astype(np.uint8)
    (root / "images").mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(root / "images" / f"img{index}.png")
    probabilities = model.predict(np.repeat(images[..., None], 3, axis=-1).astype(np.float32), verbose=0)
    return {"root": root, "store": store, "runs": runs, "probabilities": probabilities}


@pytest.fixture(autouse=True)
def no_environment_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _expected_text(project: dict, names: list[str], files: tuple[str, ...] = ("img0.png", "img1.png")) -> str:
    lines = []
    width = max(len(name) for name in names)
    for file in files:
        probabilities = project["probabilities"][int(file[3])]
        lines.append(f"{project['root'] / 'images' / file}\n")
        for rank, index in enumerate(np.argsort(-probabilities)[:2], start=1):
            lines.append(f"  {rank}. {names[index].ljust(width)}  {probabilities[index]:.4f}\n")
    return "".join(lines)


def test_the_champion_by_default_with_its_card(project, capsys, monkeypatch) -> None:
    monkeypatch.chdir(project["root"])
    Path("params.yaml").write_text(f"tracking:\n  uri: {project['store']}\n  registered_model: clf\n")
    assert main(["images", "--top-k", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out == _expected_text(project, NAMES).replace(f"{project['root']}/", "")
    assert captured.err == (
        f"models:/clf@champion (version 2, run {project['runs'][1][:8]}): 3 classes; images read as grey at 8 px "
        "(like its training data), then resized to 8 px\n"
    )


def test_a_version_logged_before_cards_takes_the_names_of_its_evaluation_report(project, capsys) -> None:
    files = [str(project["root"] / "images" / "img1.png")]
    assert main([*files, "--model", "models:/clf/1", "--tracking-uri", project["store"], "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out == _expected_text(project, NAMES, ("img1.png",))
    assert "class names from the run's evaluation report; images read as RGB at the model's 8 px" in captured.err


def test_a_run_id_means_its_logged_model(project, capsys) -> None:
    run_id = project["runs"][1]
    assert model_uri(run_id) == f"runs:/{run_id}/model"
    files = [str(project["root"] / "images" / "img0.png")]
    assert main([*files, "--model", run_id, "--tracking-uri", project["store"], "--top-k", "2"]) == 0
    assert capsys.readouterr().out == _expected_text(project, NAMES, ("img0.png",))


def test_a_keras_file_with_and_without_a_data_report(project, capsys, monkeypatch) -> None:
    monkeypatch.chdir(project["root"])
    model = str(project["root"] / "model.keras")
    report = str(project["root"] / "data_report.json")
    assert main(["images/img0.png", "--model", model, "--data-report", report, "--top-k", "2"]) == 0
    assert capsys.readouterr().out == _expected_text(project, NAMES, ("img0.png",)).replace(f"{project['root']}/", "")
    assert main(["images/img0.png", "--model", model, "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out == _expected_text(project, ["class 0", "class 1", "class 2"], ("img0.png",)).replace(
        f"{project['root']}/", ""
    )
    assert "no class names known (classes by index; give --data-report)" in captured.err


def test_an_unreadable_file_is_named_the_others_classified_and_the_exit_code_is_1(project, capsys, tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    files = [str(broken), str(project["root"] / "images" / "img0.png")]
    assert main([*files, "--model", "models:/clf@champion", "--tracking-uri", project["store"], "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == _expected_text(project, NAMES, ("img0.png",))
    assert captured.err.endswith(f"error: {broken}: cannot decode: Truncated File Read\n")


def test_json_with_mc_dropout(project, capsys) -> None:
    folder = str(project["root"] / "images")
    arguments = [folder, "--model", "models:/clf@champion", "--tracking-uri", project["store"], "--json"]
    assert main([*arguments, "--mc-dropout", "4", "--top-k", "3"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["model"] == f"models:/clf@champion (version 2, run {project['runs'][1][:8]})"
    assert document["mc_dropout_passes"] == 4
    assert [item["file"] for item in document["predictions"]] == [f"{folder}/img0.png", f"{folder}/img1.png"]
    for item, deterministic in zip(document["predictions"], project["probabilities"], strict=True):
        assert item["error"] is None
        assert sorted(score["class"] for score in item["top"]) == sorted(NAMES)
        assert sum(score["probability"] for score in item["top"]) == pytest.approx(1.0, abs=1e-6)
        # The 4 passes really differ: every class's probability varies over them (by 0.04 to 0.18 here), and
        # their mean is not what the model answers with its dropout off.
        spreads = [score["std"] for score in item["top"]]
        assert min(spreads) > 0 and max(spreads) > 0.01, item["top"]
        means = [score["probability"] for score in sorted(item["top"], key=lambda score: score["index"])]
        assert means != pytest.approx(deterministic.tolist(), abs=1e-6)
    assert "classifying: 100%" in captured.err  # a folder shows the progress bar


def test_mistakes_give_one_line_and_exit_code_2(project, capsys, tmp_path) -> None:
    image = str(project["root"] / "images" / "img0.png")
    store = ["--tracking-uri", project["store"]]
    assert main([image, "--model", "models:/clf@nope", *store]) == 2
    assert capsys.readouterr().err.startswith("error: cannot load models:/clf@nope from sqlite:///")
    assert main([image, "--model", str(tmp_path / "missing.keras")]) == 2
    assert capsys.readouterr().err == (
        f"error: model {tmp_path / 'missing.keras'} not found: give a .keras file or an MLflow model URI\n"
    )
    assert main([image, "--model", "models:/clf@champion", *store, "--mc-dropout", "1"]) == 2
    assert capsys.readouterr().err == "error: --mc-dropout needs at least 2 passes (0: off), received 1\n"
    assert main([image, "--params", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"error: give --model, or run where {tmp_path / 'none.yaml'} is (its tracking.registered_model is the "
        "default)\n"
    )
    wrong_report = tmp_path / "report.json"
    wrong_report.write_text(json.dumps({"image_shape": [8, 8], "class_names": ["a", "b"]}))
    model = str(project["root"] / "model.keras")
    assert main([image, "--model", model, "--data-report", str(wrong_report)]) == 2
    assert "error: the model has 3 outputs but 2 class names were found (a, b)" in capsys.readouterr().err


def test_help_and_the_console_script_entry() -> None:
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: scripts[name] for name in ("tl-compare", "tl-predict")} == {
        "tl-compare": "pipeline.cli.compare:main",
        "tl-predict": "pipeline.cli.predict:main",
    }
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_text_json_and_error_lines() -> None:
    top = (ClassScore(1, "one", 0.5, 0.2),)
    predictions = [
        Prediction(Path("a.png"), top=(ClassScore(1, "one", 0.875), ClassScore(0, "zero", 0.125))),
        Prediction(Path("b.png"), error="empty file (0 bytes)"),
        Prediction(Path("c.png"), top=top),
        Prediction(Path("missing.png"), error="no such file or folder"),
    ]
    assert render_text(predictions) == (
        "a.png\n  1. one   0.8750\n  2. zero  0.1250\nc.png\n  1. one   0.5000 ± 0.2000\n"
    )
    assert as_json(predictions) == [
        {
            "file": "a.png",
            "top": [
                {"class": "one", "index": 1, "probability": 0.875, "std": None},
                {"class": "zero", "index": 0, "probability": 0.125, "std": None},
            ],
            "error": None,
        },
        {"file": "b.png", "top": [], "error": "empty file (0 bytes)"},
        {"file": "c.png", "top": [{"class": "one", "index": 1, "probability": 0.5, "std": 0.2}], "error": None},
        {"file": "missing.png", "top": [], "error": "no such file or folder"},
    ]
    assert (
        error_lines(predictions) == "error: b.png: empty file (0 bytes)\nerror: missing.png: no such file or folder\n"
    )
