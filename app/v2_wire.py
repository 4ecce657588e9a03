"""The Open Inference Protocol's REST body: JSON, plus Triton's binary tensor data extension.

Bytes in, bytes out, no torch and no web framework: ``parse_request`` turns a body into
tensors (raising ``ApiError`` 400 for anything malformed) and ``encode_response`` does the
reverse. Binary data is little-endian and row-major; a BYTES element is a 4-byte
little-endian length and then its bytes. In JSON a BYTES element is a base64 string (JSON
strings cannot carry arbitrary bytes); STRING is accepted as another spelling of BYTES.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import ApiError

# Datatypes this server reads; numeric ones with their little-endian numpy type.
NUMERIC = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")
MAX_RANK = 64  # numpy's and Triton's limit on dimensions
_INT64_MAX = 2**63 - 1  # the protocol's shapes are int64
_SIZE = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits


@dataclass(frozen=True)
class InputTensor:
    """One request input: ``data`` is raw little-endian bytes for numeric datatypes, and the
    list of elements for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | list[bytes]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # top-k strings instead of the tensor; 0 = the tensor itself


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_output: bool  # the request-wide ``binary_data_output`` default


@dataclass(frozen=True)
class OutputTensor:
    """A response output: ``values`` is a numeric array, or an object array of bytes for BYTES."""

    name: str
    datatype: str
    values: np.ndarray
    binary: bool


def invalid(message: str) -> ApiError:
    """A malformed inference request (400)."""
    return ApiError(400, "invalid_inference_request", message)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Split the body at ``Inference-Header-Content-Length`` (when given) into the JSON
    header and the binary tensor data that follows it, and read every input."""
    json_size = len(body) if header_length is None else _header_length(header_length, len(body))
    try:
        header = json.loads(body[:json_size])
    except RecursionError as exc:
        raise invalid("the inference request's JSON is nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"the inference request is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise invalid("the inference request must be a JSON object")
    binary = memoryview(body)[json_size:]
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("'inputs' must be a non-empty list")
    inputs, offset = [], 0
    for raw in raw_inputs:
        tensor, offset = _input(raw, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes of binary data belong to no input")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    parameters = _object(header.get("parameters"), "parameters")
    outputs = header.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise invalid("'outputs' must be a list")
    binary_output = _flag(parameters, "binary_data_output", "parameters")
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=None if not outputs else [_requested_output(raw, binary_output) for raw in outputs],
        binary_output=binary_output,
    )


def _header_length(value: str, body_size: int) -> int:
    if not _SIZE.fullmatch(value) or int(value) > body_size:
        raise invalid(f"Inference-Header-Content-Length {value!r} is not a size within the {body_size}-byte body")
    return int(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"'{where}' must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise invalid(f"{where}: '{key}' must be true or false")
    return value


def _input(raw: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise invalid("every input needs a 'name'")
    name = raw["name"]
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if datatype == "STRING":
        datatype = BYTES
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in NUMERIC):
        raise invalid(f"input '{name}': datatype {datatype!r} is not one of BYTES, STRING, {', '.join(NUMERIC)}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_dimension(d) for d in shape):
        raise invalid(f"input '{name}': 'shape' must be a list of at most {MAX_RANK} non-negative integers below 2^63")
    parameters = _object(raw.get("parameters"), f"input '{name}' parameters")
    if any(key.startswith("shared_memory") for key in parameters):
        raise invalid(f"input '{name}': the shared-memory extension is not supported")
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise invalid(f"input '{name}' has both 'data' and 'binary_data_size'")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise invalid(f"input '{name}': binary_data_size {size!r} runs past the binary data")
        chunk = bytes(binary[offset : offset + size])
        if datatype == BYTES:
            return InputTensor(name, datatype, tuple(shape), _binary_elements(name, chunk, count)), offset + size
        return InputTensor(name, datatype, tuple(shape), _binary_array(name, datatype, chunk, count)), offset + size
    if "data" not in raw:
        raise invalid(f"input '{name}' has neither 'data' nor 'binary_data_size'")
    decode = _json_elements if datatype == BYTES else _json_array
    return InputTensor(name, datatype, tuple(shape), decode(name, datatype, raw["data"], count)), offset


def _is_dimension(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT64_MAX


def _binary_elements(name: str, chunk: bytes, count: int) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise invalid(f"input '{name}': a BYTES element's 4-byte length is cut short")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise invalid(f"input '{name}': a BYTES element of {length} bytes runs past its binary data")
        elements.append(chunk[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise invalid(f"input '{name}': {len(elements)} BYTES elements for a shape holding {count}")
    return elements


def _binary_array(name: str, datatype: str, chunk: bytes, count: int) -> bytes:
    expected = count * NUMERIC[datatype].itemsize
    if len(chunk) != expected:
        raise invalid(f"input '{name}': {len(chunk)} bytes of {datatype} data for a shape that needs {expected}")
    return chunk


def _flatten(data: Any) -> list[Any]:
    """The leaves of nested lists, in order; iterative, so nesting depth costs no stack."""
    leaves, pending = [], [data]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        else:
            leaves.append(item)
    return leaves


def _json_elements(name: str, datatype: str, data: Any, count: int) -> list[bytes]:
    elements = _flatten(data)
    if len(elements) != count:
        raise invalid(f"input '{name}': {len(elements)} elements for a shape holding {count}")
    decoded = []
    for index, element in enumerate(elements):
        try:
            if not isinstance(element, str):
                raise TypeError
            decoded.append(base64.b64decode(element, validate=True))
        except (TypeError, binascii.Error) as exc:
            raise invalid(f"input '{name}' element {index}: in JSON a BYTES element is a base64 string") from exc
    return decoded


def _json_array(name: str, datatype: str, data: Any, count: int) -> bytes:
    try:  # nested or flat; numbers given as strings are coerced, as the spec allows
        array = np.asarray(data, dtype=NUMERIC[datatype])
    except (OverflowError, TypeError, ValueError, RecursionError) as exc:
        raise invalid(f"input '{name}': the data is not a {datatype} array ({exc})") from exc
    if array.size != count:
        raise invalid(f"input '{name}': {array.size} elements for a shape holding {count}")
    return array.tobytes()


def _requested_output(raw: Any, binary_default: bool) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise invalid("every requested output needs a 'name'")
    name = raw["name"]
    parameters = _object(raw.get("parameters"), f"output '{name}' parameters")
    if any(key.startswith("shared_memory") for key in parameters):
        raise invalid(f"output '{name}': the shared-memory extension is not supported")
    classification = parameters.get("classification", 0)
    if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
        raise invalid(f"output '{name}': 'classification' must be a positive integer")
    binary = _flag(parameters, "binary_data", f"output '{name}'", binary_default)
    return RequestedOutput(name, binary, classification)


def classification_strings(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> np.ndarray:
    """``[N, k]`` BYTES of ``"<probability>:<index>:<label>"``, most probable first (ties: lower index)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    rows = [[f"{p[i]:f}:{i}:{labels[i]}".encode() for i in top] for p, top in zip(probabilities, order, strict=True)]
    return np.array(rows, dtype=object)


def encode_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers (binary outputs follow the JSON, in order)."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    header["outputs"], chunks = [], []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.values.shape)}
        if output.binary:
            chunk = _to_binary(output)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _to_json(output)
        header["outputs"].append(entry)
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(text))}
    return b"".join([text, *chunks]), headers


def _to_binary(output: OutputTensor) -> bytes:
    if output.datatype == BYTES:
        return b"".join(_LENGTH.pack(len(element)) + element for element in output.values.ravel())
    return output.values.astype(NUMERIC[output.datatype], copy=False).tobytes()


def _to_json(output: OutputTensor) -> list[Any]:
    if output.datatype == BYTES:
        return [element.decode() for element in output.values.ravel()]
    return output.values.ravel().tolist()  # type: ignore[no-any-return]
