"""The MLflow UI, in a real browser: `make ui` serves it on 127.0.0.1 only, and MLflow's compare
page of two pipeline executions (their parent runs) shows the params and metrics that differ.

The browser is Debian's headless Chromium driven by Selenium through Debian's chromedriver
(`apt-get install chromium chromium-driver`); Selenium Manager is never asked to download one.
Without them the browser test is skipped, naming the missing file.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, subprocess_env
from recipe.track import tracking

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EXPERIMENT = "finetune-recipe"

# Two executions as `dvc exp run -S model=resnet18 -S finetune.lr=0.001` and the default would log
# them: the same sections, two values apart, and different test numbers.
DEFAULT = {"seed": 42, "train": {"image_size": 128, "batch_size": 32},
           "model": {"name": "efficientnet_lite0", "head": {"pool": "avg", "dropout": 0.2}},
           "finetune": {"lr": 0.0003, "lr_mult": 9, "epochs": 3}}
RESNET = copy.deepcopy(DEFAULT)
RESNET["model"]["name"], RESNET["finetune"]["lr"] = "resnet18", 0.001
EXECUTIONS = {  # name: (params, finetune's valid_loss per epoch, evaluate's numbers)
    "default-lite0": (DEFAULT, [0.42, 0.37, 0.35], {"test": {"accuracy": 0.8656}, "tta_gain": 0.0031}),
    "resnet18-lr1e-3": (RESNET, [0.51, 0.44, 0.41], {"test": {"accuracy": 0.7927}, "tta_gain": -0.0046}),
}
DAG = [{"name": "finetune", "params": ["seed", "train", "model", "finetune"]},  # as stages/record.py reads dvc.yaml
       {"name": "evaluate", "params": ["seed"]}]


def test_make_ui_serves_the_project_store_on_localhost_only():
    out = subprocess.run(["make", "-n", "ui", "PORT=5123"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    (line,) = [cmd for cmd in out.splitlines() if cmd.startswith("mlflow ")]
    assert "--host 127.0.0.1" in line and "--port 5123" in line
    assert f"--backend-store-uri sqlite:///{REPO}/mlflow.db" in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store(monkeypatch, tmp_path):
    """A project root in tmp_path whose store (mlflow.db + mlartifacts/) holds two executions,
    logged as the stages log them: a finetune and an evaluate child run each, then the record
    stage's summary on the parent (every param, every stage's numbers as ``<stage>.<key>``)."""
    from stages._common import log_numbers
    from stages._training import log_epoch

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    parents, finetune = {}, {}
    try:
        for name, (params, valid_loss, numbers) in EXECUTIONS.items():
            monkeypatch.setenv(tracking.ENV_PIPELINE, f"ui-test-{name}")
            monkeypatch.setenv("DVC_EXP_NAME", name)  # the parent run is named after the experiment
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
            sections = {k: params[k] for k in ("seed", "train", "model", "finetune")}
            with tracking.stage_run("finetune", sections, experiment=EXPERIMENT) as run_:
                assert run_ is not None, "stage_run logged nothing (see outputs/unlogged/ under tmp_path)"
                finetune[name] = run_.info.run_id
                for epoch, loss in enumerate(valid_loss):
                    log_epoch({"epoch": epoch, "valid_loss": loss, "accuracy": 1 - loss}, step=epoch)
            with tracking.stage_run("evaluate", {"seed": params["seed"]}, experiment=EXPERIMENT):
                log_numbers(numbers)
            done = tracking.record_execution(DAG, params, experiment=EXPERIMENT,
                                             metrics={"finetune": {"valid_loss": valid_loss[-1]}, "evaluate": numbers})
            assert done and done["ran"] == ["finetune", "evaluate"], done
            parents[name] = done["parent"]
        experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    finally:
        mlflow.set_tracking_uri(None)
    return {"root": tmp_path, "parents": parents, "finetune": finetune, "experiment_id": experiment_id}


@pytest.fixture
def ui(store):
    """`make ui`'s server (one worker) on a free port, from the test's store; always stopped."""
    port = _free_port()
    log = (store["root"] / "ui.log").open("w")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store['root']}/mlflow.db",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # A session of its own, so that the server and the workers it forks are stopped together.
    proc = subprocess.Popen(cmd, cwd=store["root"], env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not come up on {url}:\n{(store['root'] / 'ui.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {**store, "url": url}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Debian Chromium through Debian's chromedriver; skipped when either is missing."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.skip(f"{path} not found: the MLflow UI browser test needs `apt-get install chromium chromium-driver`")
    from selenium import webdriver

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager, if ever consulted, must not download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,2000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


# What the compare page must show, by section (a table row's cells read as one line, joined by
# spaces; the metrics table puts names and values in separate grids, and rounds to 3 decimals).
SECTIONS = ["Visualizations", "Run details", "Parameters", "Metrics", "Artifacts", "Tags"]
EXPECTED = {
    "Run details": list(EXECUTIONS),                    # the parent runs, named after the experiments
    "Parameters": ["model.name efficientnet_lite0 resnet18", "finetune.lr 0.0003 0.001"],
    "Metrics": ["evaluate.test.accuracy", "evaluate.tta_gain", "finetune.valid_loss",
                "0.866", "0.793", "0.003", "-0.005", "0.35", "0.41"],  # 0.793: only the second run
}


def missing_on_page(text: str) -> list[str]:
    """What EXPECTED names that the page's text lacks, as ``"<section>: <line>"``."""
    lines = text.splitlines()
    absent = []
    for title, wanted in EXPECTED.items():
        end = SECTIONS[SECTIONS.index(title) + 1]
        if title not in lines or end not in lines:
            absent.append(f"{title}: (no such section yet)")
            continue
        part = lines[lines.index(title) + 1 : lines.index(end)]
        absent += [f"{title}: {line}" for line in wanted if line not in part]
    return absent


@pytest.mark.slow
def test_compare_page_of_two_executions_shows_what_differs(browser, ui, tmp_path):  # browser first: skip early
    from PIL import Image
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    runs = [ui["parents"][name] for name in EXECUTIONS]
    # MLflow 3's route (mlflow/server/js, Routes.getCompareRunPageRoute): JSON lists in the query.
    query = f"runs={json.dumps(runs, separators=(',', ':'))}&experiments={json.dumps([ui['experiment_id']])}"
    browser.get(f"{ui['url']}/#/compare-runs?{query}")

    def text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    try:
        WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda _: not missing_on_page(text()))
    except TimeoutException:
        pass  # the assertion below says what is missing, after the screenshot is taken
    try:  # the parallel-coordinates plot loads its own code; let it draw before the screenshot
        WebDriverWait(browser, 20, poll_frequency=0.5).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
    except TimeoutException:
        pass  # a picture without the plot is still worth having
    shot = tmp_path / "compare.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("RECIPE_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["RECIPE_UI_SCREENSHOT"])
    page = text()
    assert not missing_on_page(page), f"after 60 s the compare page lacks {missing_on_page(page)}:\n{page[:4000]}"
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size[0] >= 1200 and img.size[1] >= 1200
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"
    # The per-epoch charts read this endpoint: x = step = epoch.
    run_id = ui["finetune"]["resnet18-lr1e-3"]
    with urllib.request.urlopen(f"{ui['url']}/ajax-api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                                f"&metric_key=valid_loss", timeout=10) as r:
        history = json.load(r)["metrics"]
    assert [(m["step"], m["value"]) for m in history] == [(0, 0.51), (1, 0.44), (2, 0.41)]
