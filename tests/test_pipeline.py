"""End to end: the real `dvc repro` and `dvc exp run --temp` in a copy of the project, on a small
folder dataset with planted problems; checks the outputs and the runs in the MLflow store."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, image_folder, noise_image, store_runs, subprocess_env
from recipe.core.compose import compose

pytestmark = pytest.mark.slow


def sh(*cmd: str, cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(*args: str, cwd: Path) -> str:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC copy of this repository pointed at a small ImageFolder with planted problems."""
    base = tmp_path_factory.mktemp("e2e")
    data = image_folder(base / "images", {"good": 16, "bad": 10})
    (data / "bad" / "empty.png").write_bytes(b"")
    shutil.copy(data / "good" / "good_000.png", data / "good" / "zz_copy.png")
    (data / "good" / "notes.jpg").write_text("not an image")
    os.symlink(noise_image(base / "elsewhere" / "x.png", 777), data / "bad" / "escape.png")
    odd_but_valid(data)
    proj = base / "proj"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in listed.stdout.splitlines():
        if (REPO / rel).is_file() and not rel.startswith(("tests/", "bench/", "outputs/")):
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, proj / rel)
    sh("git", "init", "-q", cwd=proj)
    point_conf_at(proj, data)
    compose(proj, [], proj / "params.yaml")
    sh("git", "add", "-A", cwd=proj)
    sh("git", "commit", "-qm", "e2e fixture", cwd=proj)
    first = dvc("repro", cwd=proj)
    import yaml

    return {"proj": proj, "data": data, "first": first, "params": yaml.safe_load((proj / "params.yaml").read_text())}


def point_conf_at(proj: Path, data: Path) -> None:
    """Make the folder dataset the committed default, in conf/ where defaults live: `dvc exp run
    -S` recomposes params.yaml from conf/ plus its own overrides, so a choice written only into
    params.yaml would not survive the first experiment."""
    (proj / "conf/experiment/e2e.yaml").write_text(
        "# @package _global_\ndefaults:\n  - tiny\n  - override /data: folder\n"
        f"data:\n  path: {data}\n  limit: null\nfinetune:\n  epochs: 3\n  whole_body_epochs: 3\n"
    )
    config = proj / "conf/config.yaml"
    config.write_text(config.read_text().replace("- experiment: null", "- experiment: e2e"))


def odd_but_valid(data: Path) -> None:
    """A CMYK JPEG with a non-ASCII name, a 16-bit PNG and an EXIF-rotated JPEG: all usable."""
    rgb = Image.open(noise_image(data.parent / "tmp" / "c.png", 901, mode="RGB"))
    rgb.convert("CMYK").save(data / "good" / "ünïcødé_画像.jpg", quality=95)
    deep = (np.asarray(Image.open(noise_image(data.parent / "tmp" / "d.png", 902))).astype(np.uint16) * 257)
    Image.fromarray(deep).save(data / "bad" / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(noise_image(data.parent / "tmp" / "e.png", 903, mode="RGB")).save(data / "good" / "rotated.jpg", exif=exif, quality=95)


def plain_accuracy(proj: Path, checkpoint: Path, split_csv: str, split: str) -> float:
    """A checkpoint's accuracy (its argmax, no views) on one split of ``split_csv``, computed here
    from the model and the images, not read from any stage's output."""
    from recipe.data.loader import load_split
    from recipe.data.split import class_names, read_split
    from recipe.decide.ensemble import load_bundle

    table = read_split(proj / split_csv)
    model, meta = load_bundle(proj / checkpoint)
    data = load_split(table, proj / "data/raw/files", split=split, size=meta["size"], classes=class_names(table),
                      workers=1)
    with torch.no_grad():
        probs = model(data.images.float() / 255)
    return float((probs.argmax(1) == data.labels).double().mean())


def test_repro_writes_every_output(project):
    proj = project["proj"]
    manifest = pd.read_csv(proj / "outputs/audit/manifest.csv", keep_default_na=False).set_index("path")
    assert {"label", "keep", "issues", "group"} <= set(manifest.columns)
    assert manifest.loc["bad/empty.png", "issues"] == "zero_byte"
    assert manifest.loc["good/notes.jpg", "issues"] == "not_image"
    assert manifest.loc["bad/escape.png", "issues"] == "path_outside_root"
    assert manifest.loc["good/zz_copy.png", "issues"] == "exact_duplicate"
    assert not manifest.loc[["bad/empty.png", "good/notes.jpg", "bad/escape.png", "good/zz_copy.png"], "keep"].any()
    odd = manifest.loc[["good/ünïcødé_画像.jpg", "bad/deep16.png", "good/rotated.jpg"]]
    assert odd["keep"].all() and (odd["issues"] == "").all()
    assert odd["mode"].tolist()[0] == "CMYK" and odd["mode"].tolist()[1] in ("I;16", "I") and odd["exif_orientation"].tolist() == [0, 0, 6]
    report = json.loads((proj / "outputs/audit/report.json").read_text())
    assert report["kept"] == 29 and report["classes"] == {"bad": 11, "good": 18}
    assert report["issues"]["exact_duplicate"] == 1 and report["issues"]["zero_byte"] == 1
    for name in ("class_histogram", "sizes", "samples", "duplicates"):
        assert (proj / f"outputs/audit/plots/{name}.png").stat().st_size > 1000
    split = pd.read_csv(proj / "outputs/split/split.csv")
    assert len(split) == 29 and set(split["split"]) == {"train", "valid", "test"}
    assert json.loads((proj / "outputs/split/metrics.json").read_text())["leaking_groups"] == 0


STAGES = ["audit", "baseline", "cv", "cv_split", "evaluate", "export", "finetune", "ingest", "lr_find", "resize", "select",
          "split", "train_head"]


def test_stages_of_one_repro_share_one_parent_run(project):
    runs = store_runs(project["proj"])
    children = [r for r in runs if r.info.run_name in STAGES]
    assert sorted(r.info.run_name for r in children) == STAGES
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parents) == 1
    (parent,) = [r for r in runs if r.info.run_id in parents]
    assert parent.data.tags["git_commit"] == sh("git", "rev-parse", "HEAD", cwd=project["proj"]).strip()
    audit = next(r for r in children if r.info.run_name == "audit")
    assert audit.data.metrics["kept"] == 29 and audit.data.params["audit.near_dup_bits"] == "4"
    artifacts = {a.path for a in mlflow.MlflowClient(f"sqlite:///{project['proj']}/mlflow.db").list_artifacts(audit.info.run_id, "plots")}
    assert "plots/samples.png" in artifacts
    assert (project["proj"] / "mlartifacts").is_dir()


def test_training_stages_write_checkpoints_histories_and_metrics(project):
    proj = project["proj"]
    base = json.loads((proj / "outputs/baseline/metrics.json").read_text())
    assert set(base["checks"]) == {"init_loss", "batch_dependencies", "input_independent", "capacity",
                                   "overfit_one_batch"}
    assert base["checks"]["overfit_one_batch"]["passed"] and base["overfit_loss"] < 0.05
    assert base["checks"]["batch_dependencies"]["passed"] and base["batch_dependency_cross"] == 0
    assert (proj / "outputs/baseline/batch.png").stat().st_size > 1000
    suggestion = json.loads((proj / "outputs/lr_find/suggestion.json").read_text())
    assert suggestion["rule"] == "valley" and set(suggestion["suggestions"]) == {"valley", "steep", "minimum", "slide"}
    curve = pd.read_csv(proj / "outputs/lr_find/curve.csv")
    assert list(curve.columns) == ["lr", "loss", "smoothed"] and curve["lr"].is_monotonic_increasing
    head = json.loads((proj / "outputs/train_head/metrics.json").read_text())
    assert head["lr"] == pytest.approx(suggestion["lr"])  # train_head.lr: auto took lr_find's suggestion
    for stage, size, epochs in (("train_head", 64, 3), ("finetune", 64, 3), ("resize", 96, 2)):
        history = pd.read_csv(proj / f"outputs/{stage}/history.csv")
        assert list(history["epoch"]) == list(range(len(history))) and 1 <= len(history) <= epochs
        ckpt = torch.load(proj / f"outputs/{stage}/model.pt", weights_only=True)
        assert ckpt["size"] == size and ckpt["classes"] == ["bad", "good"] and ckpt["stage"] == stage
        metrics = json.loads((proj / f"outputs/{stage}/metrics.json").read_text())
        assert metrics["size"] == size  # the valid accuracy of the checkpoint it wrote, on the split it trained by
        assert metrics["valid_accuracy"] == pytest.approx(
            plain_accuracy(proj, f"outputs/{stage}/model.pt", "outputs/cv/split.csv", "valid"))
        assert not (proj / f"outputs/{stage}/resume").exists()  # a finished stage leaves no resume state
        # prediction dynamics: every valid image (fewer than train.dynamics_images) after every epoch
        dyn = pd.read_csv(proj / f"outputs/{stage}/dynamics.csv")
        n_valid = (pd.read_csv(proj / "outputs/split/split.csv")["split"] == "valid").sum()
        assert len(dyn) == n_valid * len(history) and dyn["image"].nunique() == n_valid
        rates = pd.read_csv(proj / f"outputs/{stage}/lr_schedule.csv")  # every batch's rate of every trained group
        assert rates["step"].nunique() == rates.groupby("group").size().max() > len(history)
        assert (proj / f"outputs/{stage}/lr_schedule.png").stat().st_size > 1000
    # SGDR snapshots: finetune's 3 epochs (cycles of 1 and 2) end cycles at epochs 0 and 2
    snaps = sorted(p.name for p in (proj / "outputs/finetune/snapshots").iterdir())
    n_epochs = len(pd.read_csv(proj / "outputs/finetune/history.csv"))
    assert snaps == [f"epoch_{e}.pt" for e in (0, 2) if e < n_epochs]
    first = torch.load(proj / "outputs/finetune/snapshots/epoch_0.pt", weights_only=True)
    assert first["stage"] == "finetune@0" and first["size"] == 64
    runs = {r.info.run_name: r for r in store_runs(proj)}
    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(runs["finetune"].info.run_id, "valid_loss")]
    assert steps == list(range(len(pd.read_csv(proj / "outputs/finetune/history.csv"))))
    assert runs["finetune"].data.params["finetune.lr_mult"] == "9"


def test_select_chooses_on_valid_and_evaluate_scores_the_choice_on_test(project):
    from recipe.report import SECTIONS

    proj = project["proj"]
    split = pd.read_csv(proj / "outputs/split/split.csv")
    n_test = int((split["split"] == "test").sum())
    sel = json.loads((proj / "outputs/select/metrics.json").read_text())
    table = pd.read_csv(proj / "outputs/select/candidates.csv")
    assert sel["candidates"] == len(table) and project["params"]["select"]["view_sets"] == ["none", "flip_h", "flips"]
    # folder data train with augment none: no view set with a flip training never showed (trained_views_only)
    assert set(table["views"]) == {"none"} and "select: view set 'flips' left out" in project["first"]
    assert {"pixels", "train_head", "finetune", "resize", "finetune+resize"} <= set(table["candidate"])  # the baseline too
    chosen = sel["chosen"]  # the lowest valid log loss; ties to the cheaper
    assert chosen["valid_log_loss"] == pytest.approx(table["valid_log_loss"].min())
    assert chosen["threshold_rule"] == "accuracy" and 0 < chosen["threshold"] < 1  # two classes
    m = json.loads((proj / "outputs/evaluate/metrics.json").read_text())
    assert m["chosen"]["candidate"] == chosen["candidate"] and m["chosen"]["views"] == chosen["views"]
    assert m["chosen"]["threshold"] == pytest.approx(chosen["threshold"])
    for key in ("test", "test_chosen"):
        assert m[key]["images"] == n_test
        assert {"accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece", "accuracy_ci95", "per_class"} <= set(m[key])
    assert list(m["table"]) == ["majority_class", "baseline_model", "pixels", "train_head", "finetune", "resize", "chosen_plain",
                                "chosen"]
    for stage in ("train_head", "finetune", "resize"):  # each checkpoint scored on the test split, plainly
        assert m["table"][stage]["test_accuracy"] == pytest.approx(
            plain_accuracy(proj, f"outputs/{stage}/model.pt", "outputs/split/split.csv", "test"))
    predictions = pd.read_csv(proj / "outputs/evaluate/predictions.csv")
    assert len(predictions) == n_test and {"actual", "predicted", "predicted_chosen"} <= set(predictions.columns)
    assert (predictions["predicted_chosen"] == predictions["actual"]).mean() == pytest.approx(m["test_chosen"]["accuracy"])
    page = (proj / "outputs/evaluate/report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    # 14 pictures before, + 3 lr_schedule.png and dynamics.png, + 5 in evaluate/inside/
    assert page.count("data:image/png;base64,") == 14 + 4 + 5 and "not available" not in page and "not found" not in page
    first = project["first"]  # the choice and the stage table end dvc repro's output
    assert first.index("Chosen on valid") > first.index("Running stage 'evaluate'")
    assert first.index("chosen_plain") > first.index("Chosen on valid")
    plots = json.loads(dvc("plots", "show", "--json", "--split", cwd=proj))["data"]  # DVC's confusion template
    assert '"groupby": ["actual", "predicted"]' in json.dumps(plots["outputs/evaluate/predictions.csv"])
    assert '"groupby": ["actual", "predicted_chosen"]' in json.dumps(plots["confusion_chosen"])

    runs = {r.info.run_name: r for r in store_runs(proj)}
    run = runs["evaluate"]
    assert run.data.metrics["test_chosen.accuracy"] == pytest.approx(m["test_chosen"]["accuracy"])
    assert runs["select"].data.metrics["chosen.valid_log_loss"] == pytest.approx(chosen["valid_log_loss"])
    assert runs["select"].data.tags["chosen"].startswith(chosen["candidate"])
    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlflow.db")
    assert {"report.html", "metrics.json", "predictions.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {f"inside/{n}" for n in ("first_conv.png", "weight_change.png", "activations.png", "gradcam_top_losses.png",
                                     "gradcam_correct.png")} == {a.path for a in client.list_artifacts(run.info.run_id, "inside")}
    if m["chosen"]["candidate"] == "pixels":  # these noise images: the pixels baseline may win, no layers to look into
        assert "logistic regression on the pixels" in m["inside"]["skipped"]
    else:
        assert m["inside"]["weight_change"]["early"] == 0 < m["inside"]["weight_change"]["late"]  # unfreeze_to: 1
        assert run.data.metrics["inside.layers"] == m["inside"]["layers"]
    mlflow.set_tracking_uri(f"sqlite:///{proj}/mlflow.db")
    try:
        model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    files = [proj / "data/raw/files" / p for p in predictions["path"][:3]]
    out = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))  # the files' bytes
    probs = out[["bad", "good"]].to_numpy()
    np.testing.assert_allclose(probs, predictions[["p_bad", "p_good"]][:3], atol=1e-4)  # = evaluate's chosen pass
    assert list(out["predicted"]) == list(predictions["predicted_chosen"][:3])  # its threshold too


def test_export_writes_an_onnx_model_that_gives_evaluates_probabilities(project):
    from recipe.ship.onnx_model import OnnxModel
    from recipe.ship.predict import prepare

    proj = project["proj"]
    m = json.loads((proj / "outputs/export/metrics.json").read_text())
    evaluate = json.loads((proj / "outputs/evaluate/metrics.json").read_text())
    predictions = pd.read_csv(proj / "outputs/evaluate/predictions.csv")
    from recipe.decide.ensemble import load_bundle
    from recipe.ship.export import batchnorms

    assert m["parity"]["images"] == len(predictions) and m["batchnorm_left"] == 0
    # every BatchNorm of the chosen model's members follows a convolution: all of them are folded
    bns = batchnorms(load_bundle(proj / "outputs/select/model.pt")[0])
    assert m["folded_pairs"] == m["batchnorm_before"] == bns
    # on these noise images the pixels baseline (no BatchNorm) may win select; a network has some
    assert bns > 0 or m["candidate"] == "pixels"
    # the checkpoint's decisions (threshold applied) are evaluate's as chosen
    assert m["test_accuracy"]["checkpoint"] == pytest.approx(
        (predictions["predicted_chosen"] == predictions["actual"]).mean())
    assert m["parity"]["onnx_max_abs_diff"] <= m["tolerance"] and m["parity"]["onnx_class_mismatches"] == 0
    assert m["test_accuracy"]["onnx"] == pytest.approx(evaluate["test_chosen"]["accuracy"])
    runtime = OnnxModel(proj / "outputs/export/model.onnx")
    assert runtime.classes == ["bad", "good"] and runtime.threshold == pytest.approx(evaluate["chosen"]["threshold"])
    x = prepare([proj / "data/raw/files" / p for p in predictions["path"]], runtime.size, runtime.channels)
    probs, predicted = runtime.run(x)
    np.testing.assert_allclose(probs, predictions[["p_bad", "p_good"]], atol=1e-4)  # = evaluate's chosen pass
    assert [runtime.classes[i] for i in predicted] == list(predictions["predicted_chosen"])
    assert "export: " in project["first"] and "every decided class the same" in project["first"]
    runs = {r.info.run_name: r for r in store_runs(proj)}
    assert runs["export"].data.metrics["parity.onnx_max_abs_diff"] == pytest.approx(m["parity"]["onnx_max_abs_diff"])
    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlflow.db")
    assert "model.onnx" in {a.path for a in client.list_artifacts(runs["export"].info.run_id)}


def test_temp_experiment_lands_in_the_root_store_under_its_own_parent(project):
    proj = project["proj"]
    sh("git", "add", "-A", cwd=proj)
    sh("git", "commit", "-qm", "lock", "--allow-empty", cwd=proj)
    before = {r.info.run_id for r in store_runs(proj)}
    # only export's params change: every stage before it is reused from the workspace's outputs
    dvc("exp", "run", "--temp", "-n", "tolerance", "-S", "export.tolerance=0.001", cwd=proj)
    new = [r for r in store_runs(proj) if r.info.run_id not in before]
    parents = [r for r in new if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["dvc_exp_name"] == "tolerance"
    children = {r.info.run_name: r for r in new if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(children) == len(new) - 1  # every run of the execution is a child of its one parent
    assert children["export"].data.params["export.tolerance"] == "0.001"
    assert "recipe.reused" not in children["export"].data.tags
    split_runs = [r for r in new if r.info.run_name == "split"]
    assert len(split_runs) == 1 and split_runs[0].data.tags["recipe.reused"] == "true"  # logged by record
    assert split_runs[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert split_runs[0].data.params["split.seed"] == str(project["params"]["split"]["seed"])
    assert {"audit", "split", "train_head", "finetune", "resize", "select", "evaluate"} <= set(children)
    # every kept image is placed: the fixture's 29, and bad_new.png had test_new_data_reruns_the_data_stages
    # added it (this test runs before it, on the workspace the first repro left: only export reruns)
    kept = 29 + (project["data"] / "bad" / "bad_new.png").exists()
    assert sum(v for k, v in split_runs[0].data.metrics.items() if k.startswith("counts.")) == kept
    assert not list((proj / ".dvc" / "tmp").rglob("mlflow.db"))
    shown = dvc("exp", "show", "--json", cwd=proj)
    assert "tolerance" in shown


def test_killed_training_stage_resumes_to_the_same_metrics(project):
    """SIGKILL finetune once its first epoch is saved; the rerun resumes and ends where an
    uninterrupted run ended."""
    import signal
    import time

    proj = project["proj"]
    uninterrupted = json.loads((proj / "outputs/finetune/metrics.json").read_text())
    resume = proj / "outputs/finetune/resume/unfrozen.pt"
    cmd = [sys.executable, "-m", "stages.finetune", "--split", "outputs/split/split.csv", "--raw", "data/raw",
           "--checkpoint", "outputs/train_head/model.pt", "--model", "outputs/finetune/model.pt",
           "--baseline", "outputs/baseline/metrics.json",
           "--history", "outputs/finetune/history.csv", "--metrics", "outputs/finetune/metrics.json"]
    proc = subprocess.Popen(cmd, cwd=proj, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert resume.exists(), "the stage finished before it could be killed"
    out = sh(*cmd, cwd=proj)
    assert "resuming after epoch" in out
    resumed = json.loads((proj / "outputs/finetune/metrics.json").read_text())
    for key in ("valid_loss", "valid_accuracy", "epochs"):
        assert resumed[key] == uninterrupted[key], key


def test_nothing_changed_skips_audit_and_split(project):
    out = dvc("repro", cwd=project["proj"])
    assert "Stage 'audit' didn't change, skipping" in out
    assert "Stage 'split' didn't change, skipping" in out
    assert "Stage 'resize' didn't change, skipping" in out
    assert "Stage 'select' didn't change, skipping" in out
    assert "Stage 'evaluate' didn't change, skipping" in out
    assert "Stage 'export' didn't change, skipping" in out


def test_new_data_reruns_the_data_stages(project):
    """A new file in the source: ingest copies it, and audit and split run again (DVC reruns what
    depends on them; ``dvc repro split`` stops there to keep the suite short, and the next test's
    experiment reruns everything after a new split anyway)."""
    noise_image(project["data"] / "bad" / "bad_new.png", 4242)
    out = dvc("repro", "split", cwd=project["proj"])
    assert "Running stage 'audit'" in out and "Running stage 'split'" in out
    report = json.loads((project["proj"] / "outputs/audit/report.json").read_text())
    assert report["classes"]["bad"] == 12
