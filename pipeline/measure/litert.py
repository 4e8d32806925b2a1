"""Running and inspecting TFLite files with the LiteRT interpreter, the runtime that ships."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

# TFLite schema TensorType ids -> numpy dtypes, for decoding constant buffers.
_TENSOR_DTYPES = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64,
    6: np.bool_, 7: np.int16, 9: np.int8, 10: np.float64,
}
# TFLite's INT4 tensor type: two values packed in each byte, which no numpy dtype reads.
_INT4 = 17


def interpreter(path: Path, threads: int):
    """A LiteRT interpreter for `path` with a fixed thread count."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=threads)


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Map float inputs onto an integer input tensor's scale and zero point; floats, and integers for an
    unquantized integer input (token ids), pass through."""
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer) or scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """Float values of an output tensor, undoing integer quantization where present."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


def predict(path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float outputs of the model's first output for float inputs `x` (an array or a streamed split).

    The interpreter runs batches of MEASURE_BATCH examples: its activations for a whole split at
    once would take gigabytes for images of a few hundred thousand pixels.
    """
    from pipeline.data.streaming import in_batches

    runner = interpreter(path, threads)
    outputs, shape = [], None
    for batch in in_batches(x):
        if batch.shape != shape:  # the first batch, and a shorter last one
            runner.resize_tensor_input(runner.get_input_details()[0]["index"], list(batch.shape))
            runner.allocate_tensors()
            shape = batch.shape
        # Details re-read after allocation: resizing can change the reported shapes.
        source, target = runner.get_input_details()[0], runner.get_output_details()[0]
        runner.set_tensor(source["index"], quantize_input(batch, source))
        runner.invoke()
        outputs.append(dequantize_output(runner.get_tensor(target["index"]), target))
    if not outputs:
        return np.zeros((0, *runner.get_output_details()[0]["shape"][1:]), np.float32)
    return np.concatenate(outputs)


def latency_ms(path: Path, sample: np.ndarray, runs: int, warmup: int, threads: int) -> np.ndarray:
    """Milliseconds per invocation at batch 1, one entry per timed run."""
    runner = interpreter(path, threads)
    source = runner.get_input_details()[0]
    runner.resize_tensor_input(source["index"], [1, *sample.shape])
    runner.allocate_tensors()
    source = runner.get_input_details()[0]
    runner.set_tensor(source["index"], quantize_input(sample[np.newaxis], source))
    for _ in range(warmup):
        runner.invoke()
    timings = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        runner.invoke()
        timings[i] = (time.perf_counter() - start) * 1000
    return timings


def constant_tensors(path: Path) -> list[tuple[tuple[int, ...], int, int | None]]:
    """(shape, element count, zero count or None) of every constant tensor in the file.

    Sparse-encoded tensors store only their non-zeros, so their zeros are the shape's size
    minus the stored values.
    """
    model = read_model(path)
    found: list[tuple[tuple[int, ...], int, int | None]] = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            data = model.buffers[tensor.buffer].data
            if data is None or tensor.shape is None:
                continue
            shape = tuple(int(d) for d in tensor.shape)
            count = int(np.prod(shape)) if shape else 1
            if tensor.type == _INT4 and tensor.sparsity is None:
                found.append((shape, count, count - int(np.count_nonzero(int4_values(data)[:count]))))
                continue
            dtype = _TENSOR_DTYPES.get(tensor.type)
            if dtype is None:
                found.append((shape, count, None))
                continue
            values: np.ndarray = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=dtype)
            zeros = count - int(np.count_nonzero(values)) if tensor.sparsity is None else count - values.size
            found.append((shape, count, zeros))
    return found


def int4_values(data: Any) -> np.ndarray:
    """The 4-bit values packed two to a byte (low nibble first) in a tensor buffer, as signed integers."""
    packed = np.asarray(data, dtype=np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles)


def read_model(path: Path) -> Any:
    """The parsed flatbuffer of a .tflite file (schema object API), read once per file version.

    The runner's measurements read the same file for its weights and for its operators.
    """
    stat = Path(path).stat()
    return _read_model(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_model(path: str, mtime_ns: int, size: int) -> Any:
    from pipeline.private_api import read_tflite

    return read_tflite(path)
