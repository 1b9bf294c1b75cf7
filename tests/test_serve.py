"""`mlflow models serve` for the model evaluate logs, on 127.0.0.1: a real PNG sent over HTTP
gets the model's class probabilities; a corrupt or unsupported file gets a clear 400, no traceback."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from test_predict import CLASSES, log_test_model, make_checkpoint, make_images
from test_tracking import free_port

from conftest import subprocess_env
from recipe.ship.predict import prepare

pytestmark = pytest.mark.slow


def request(url: str, files: list[bytes]) -> tuple[int, dict]:
    """What a user sends (README: Serving): the files' bytes, base64, in a dataframe_split."""
    body = json.dumps({"dataframe_split": {"columns": ["image"],
                                           "data": [[base64.b64encode(b).decode()] for b in files]}}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, images):
    """The logged model under `mlflow models serve` (started once for this module)."""
    tmp_path = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        model_uri, model, decided = log_test_model(tmp_path, make_checkpoint(tmp_path), images)
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=subprocess_env(MLFLOW_TRACKING_URI=uri), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{base}/ping", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow models serve did not start:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"{base}/invocations", model, decided
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_png_over_http_gets_the_models_probabilities(served, images):
    url, model, decided = served
    status, body = request(url, [p.read_bytes() for p in images])  # a grayscale PNG and an RGB JPEG
    assert status == 200, body
    rows = body["predictions"]
    with torch.no_grad():
        expected = model(torch.from_numpy(prepare(list(images), model.size, model.channels))).numpy()
    np.testing.assert_allclose([[r[c] for c in CLASSES] for r in rows], expected, atol=1e-5)
    assert [r["predicted"] for r in rows] == decided  # the model's threshold,
    assert decided != [CLASSES[i] for i in expected.argmax(1)]  # which overrules the argmax


@pytest.mark.parametrize("bad, why", [(b"\x89PNG\r\n\x1a\nnot really", "cannot read as an image"),
                                      (b"just some text, not an image", "not one of PNG"),
                                      (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "not one of PNG")])
def test_a_corrupt_or_unsupported_file_gets_a_clear_400(served, images, bad, why):
    url, _, _ = served
    status, body = request(url, [images[0].read_bytes(), bad])
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "image 1: cannot read as an image" in body["message"] and why in body["message"]
    assert "Traceback" not in json.dumps(body) and "stack_trace" not in body
