"""The Open Inference Protocol on a real two-model server, driven by NVIDIA's own ``tritonclient``."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from torchvision.models import AlexNet_Weights
from tritonclient.utils import InferenceServerException

from model.checkpoint import load_checkpoint
from model.presets import load_eval_tensor
from tests.conftest import RunningServer, make_image

pytestmark = pytest.mark.slow  # one real two-model server for the module

IMAGES = [make_image(seed) for seed in (21, 22, 23)]
IMAGENET_LABELS = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]


@pytest.fixture(scope="module")
def server(random_checkpoint: Path, imagenet_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer(
        {
            "ALEXNET_MODELS": f"catdog={random_checkpoint},imagenet={imagenet_checkpoint}",
            "ALEXNET_DTYPE": "fp32",
            "ALEXNET_MAX_BATCH_SIZE": "8",
            "ALEXNET_MAX_DELAY_MS": "50",
            "ALEXNET_MAX_QUEUE": "128",  # requests of up to 32 images each, not refused (sizing: test_overload_head)
        }
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield connection
    connection.close()


def _predicted(server: RunningServer, data: bytes, model: str = "catdog") -> np.ndarray:
    """The probabilities ``/predict`` gives for one image, by class index."""
    body = httpx.post(
        f"{server.url}/predict?model={model}&top_k=1000", content=data, headers={"Content-Type": "image/jpeg"}
    )
    by_index = {p["index"]: p["probability"] for p in body.json()["predictions"]}
    return np.array([by_index[i] for i in range(len(by_index))], dtype=np.float32)


def _images_input(images: list[bytes], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("images", [len(images)], "BYTES")
    if binary:  # raw bytes, each after its 4-byte length
        tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    else:  # JSON strings cannot carry image bytes: base64
        tensor.set_data_from_numpy(np.array([base64.b64encode(i) for i in images], dtype=object), binary_data=False)
    return tensor


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("catdog") and client.is_model_ready("imagenet", model_version="1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("catdog", model_version="2")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "alexnet-serving"
    assert metadata["extensions"] == ["binary_tensor_data", "classification"]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("imagenet")
    assert metadata == client.get_model_metadata("imagenet", model_version="1")
    assert metadata["name"] == "imagenet" and metadata["versions"] == ["1"] and metadata["platform"] == "pytorch_eager"
    assert metadata["inputs"] == [
        {"name": "images", "datatype": "BYTES", "shape": [-1]},
        {"name": "tensor", "datatype": "FP32", "shape": [-1, 3, 227, 227]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 227, 227, 3]},
    ]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
    assert client.get_model_metadata("catdog")["outputs"][0]["shape"] == [-1, 2]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope")
    assert unknown.value.status() == "404" and "no model named 'nope'" in unknown.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_encoded_images_match_predict(
    server: RunningServer, client: triton.InferenceServerClient, binary: bool
) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("catdog", [_images_input(IMAGES, binary=binary)], outputs=[output], request_id="r-7")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 2)
    for data, row in zip(IMAGES, probabilities, strict=True):
        np.testing.assert_allclose(row, _predicted(server, data), atol=1e-4)
    response = result.get_response()
    assert response["id"] == "r-7" and response["model_name"] == "catdog" and response["model_version"] == "1"


def test_no_outputs_named_means_all_outputs_in_binary(client: triton.InferenceServerClient) -> None:
    result = client.infer("imagenet", [_images_input(IMAGES[:1], binary=True)])  # binary_data_output: true
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 1000 * 4
    assert abs(float(result.as_numpy("probabilities").sum()) - 1) < 1e-4


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_preprocessed_fp32_and_uint8_tensors(
    server: RunningServer, client: triton.InferenceServerClient, random_checkpoint: Path, binary: bool
) -> None:
    prep = load_checkpoint(random_checkpoint).meta.preprocessing
    pixels = torch.stack([load_eval_tensor(data, prep) for data in IMAGES[:2]])  # uint8 [2, 3, 227, 227]
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    normalised = ((pixels / 255.0 - mean) / std).numpy().astype(np.float32)
    expected = np.stack([_predicted(server, data) for data in IMAGES[:2]])

    fp32 = triton.InferInput("tensor", list(normalised.shape), "FP32")
    fp32.set_data_from_numpy(normalised, binary_data=binary)
    uint8 = triton.InferInput("pixels", [2, 227, 227, 3], "UINT8")
    uint8.set_data_from_numpy(pixels.permute(0, 2, 3, 1).contiguous().numpy(), binary_data=binary)
    for tensor in (fp32, uint8):
        output = triton.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("catdog", [tensor], outputs=[output])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-4)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_extension(server: RunningServer, client: triton.InferenceServerClient, binary: bool) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    result = client.infer("imagenet", [_images_input(IMAGES[:2], binary=True)], outputs=[output])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 3) and result.get_output("probabilities")["datatype"] == "BYTES"
    for data, row in zip(IMAGES[:2], top, strict=True):
        expected = _predicted(server, data, model="imagenet")
        entries = [(e.decode() if isinstance(e, bytes) else e).split(":", 2) for e in row]
        assert [int(index) for _, index, _ in entries] == list(np.argsort(-expected, kind="stable")[:3])
        for probability, index, label in entries:
            assert abs(float(probability) - expected[int(index)]) < 1e-5
            assert label == IMAGENET_LABELS[int(index)]


def test_errors_reach_the_client(client: triton.InferenceServerClient) -> None:
    def infer_error(model: str, tensor: triton.InferInput) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [tensor])
        return caught.value

    assert infer_error("nope", _images_input(IMAGES[:1], binary=True)).status() == "404"
    garbage = infer_error("catdog", _images_input([IMAGES[0], b"not an image"], binary=True))
    assert garbage.status() == "422" and "image 2 of 2" in garbage.message()
    wrong = triton.InferInput("tensor", [1, 3, 224, 224], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 224, 224), dtype=np.float32))
    assert infer_error("catdog", wrong).status() == "400"
    nan = triton.InferInput("tensor", [1, 3, 227, 227], "FP32")
    nan.set_data_from_numpy(np.full((1, 3, 227, 227), np.nan, dtype=np.float32))
    assert infer_error("catdog", nan).status() == "422"


def test_an_n_image_request_is_n_items_in_one_batch(server: RunningServer) -> None:
    header = {
        "inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": 0}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    chunk = b"".join(len(data).to_bytes(4, "little") + data for data in IMAGES)
    header["inputs"][0]["parameters"]["binary_data_size"] = len(chunk)
    text = json.dumps(header).encode()
    response = httpx.post(
        f"{server.url}/v2/models/catdog/versions/1/infer",
        content=text + chunk,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(text))},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-batch-size"] == "3,3,3"
    json_size = int(response.headers["inference-header-content-length"])
    output = json.loads(response.content[:json_size])["outputs"][0]
    assert output["shape"] == [3, 2] and output["parameters"]["binary_data_size"] == len(response.content) - json_size
    probabilities = np.frombuffer(response.content[json_size:], dtype="<f4").reshape(3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{", {}, 400, "not valid JSON"),
        (b'{"inputs": []}', {}, 400, "non-empty list"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "text/plain"),
        (b"{}", {"Content-Encoding": "gzip"}, 415, "gzip"),
        (b"{}xyz", {"Inference-Header-Content-Length": "2"}, 400, "inputs"),
        (b"{}", {"Inference-Header-Content-Length": "9"}, 400, "Inference-Header-Content-Length"),
        (b"\0" * (21 * 1024 * 1024), {}, 413, "larger than"),
    ],
)
def test_protocol_errors_are_plain_error_strings(
    server: RunningServer, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = httpx.post(f"{server.url}/v2/models/catdog/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error


def test_health_endpoints_answer_json(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/imagenet/ready").json() == {"name": "imagenet", "ready": True}
    missing = httpx.get(f"{server.url}/v2/models/nope/ready")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def _log_lines_when_written(server: RunningServer, marker: str, timeout: float = 30.0) -> list[dict]:
    """The JSON log lines holding ``marker``, once there is one: the access line is written
    after the response has gone out, so it may trail the client's answer."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{") and marker in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_one_json_log_line_per_request(server: RunningServer) -> None:
    data = IMAGES[0]
    response = httpx.post(
        f"{server.url}/predict?model=imagenet",
        content=data,
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "log-1"},
    )
    assert response.status_code == 200
    assert _log_lines_when_written(server, '"log-1"'), "no access line for the request"
    # A later request's line is a barrier: a second line for the first request would be there by then.
    httpx.get(f"{server.url}/models", headers={"X-Request-ID": "log-barrier"})
    assert _log_lines_when_written(server, '"log-barrier"')
    lines = _log_lines_when_written(server, '"log-1"')
    assert len(lines) == 1, lines
    (entry,) = lines
    assert entry["logger"] == "app.access" and entry["route"] == "/predict" and entry["status"] == 200
    assert entry["model"] == "imagenet" and entry["images"] == 1 and entry["batch_size"] == 1
    assert entry["bytes_in"] == len(data) and entry["bytes_out"] == len(response.content)
    assert all(entry[f"{stage}_ms"] >= 0 for stage in ("queue", "preprocess", "inference", "total"))
    assert max(len(line) for line in server.output().splitlines()) < 2000, "a body got into the log"


def _images(count: int, seed: int = 40) -> dict[str, object]:
    """An ``images`` input of ``count`` small, valid pictures (base64 in JSON)."""
    data = [base64.b64encode(make_image(seed + i, size=(48, 40))).decode() for i in range(count)]
    return {"name": "images", "shape": [count], "datatype": "BYTES", "data": data}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [_images(1), _images(1) | {"name": "pixels"}]}, "send exactly one input"),
        ({"inputs": [_images(1), _images(1)]}, "send exactly one input"),
        ({"inputs": [_images(1) | {"name": "picture"}]}, "unknown input 'picture'"),
        ({"inputs": [_images(1)], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({"inputs": [_images(1)], "outputs": [{"name": "probabilities"}, {"name": "x"}]}, "unknown output 'x'"),
        ({"inputs": [_images(1) | {"datatype": "STRING2"}]}, "STRING2"),
        ({"inputs": [{"name": "tensor", "shape": [1], "datatype": "UINT8", "data": [1]}]}, "'tensor' is FP32"),
        (
            {"inputs": [{"name": "pixels", "shape": [1, 227, 227, 3], "datatype": "FP32", "data": [0.0] * 154587}]},
            "'pixels' is UINT8",
        ),
        (
            {"inputs": [{"name": "images", "shape": [0], "datatype": "BYTES", "data": []}]},
            "holds 0 images; send 1 to 32",
        ),
        ({"inputs": [_images(33)]}, "holds 33 images; send 1 to 32"),
    ],
    ids=[
        "two-inputs",
        "same-input-twice",
        "unknown-input",
        "unknown-output",
        "one-unknown-output",
        "unknown-datatype",
        "tensor-as-uint8",
        "pixels-as-fp32",
        "zero-images",
        "over-the-image-limit",
    ],
)
def test_inputs_and_outputs_are_checked_against_the_model(
    server: RunningServer, body: dict[str, object], message: str
) -> None:
    response = httpx.post(f"{server.url}/v2/models/catdog/infer", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error, error


def test_the_image_limit_is_the_last_request_that_passes(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/v2/models/catdog/infer", json={"inputs": [_images(32)]}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [32, 2]
