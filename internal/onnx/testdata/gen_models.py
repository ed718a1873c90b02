#!/usr/bin/python3
"""Generates the ONNX models and reference tensors under this directory.

Run with Debian's interpreter (python3-onnx, python3-numpy):

    /usr/bin/python3 internal/onnx/testdata/gen_models.py

With --wide DIR it writes only mlp_wide.onnx (256 -> 1024 -> 1024 -> 10,
5 MB, too large to check in) to DIR, for the batching benchmark.

Weights come from a fixed-seed numpy generator, so the output is the same on
every run. Reference outputs are computed here with numpy in float64 from the
same weights, never with ONNX Runtime, so that the Go tests compare ORT
against an independent implementation.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = [helper.make_opsetid("", 13)]

# Every datatype of the Open Inference Protocol that ONNX Runtime can carry
# through Identity, with its ONNX element type and numpy dtype.
DTYPES = [
    ("BOOL", TensorProto.BOOL, np.bool_),
    ("UINT8", TensorProto.UINT8, np.uint8),
    ("UINT16", TensorProto.UINT16, np.uint16),
    ("UINT32", TensorProto.UINT32, np.uint32),
    ("UINT64", TensorProto.UINT64, np.uint64),
    ("INT8", TensorProto.INT8, np.int8),
    ("INT16", TensorProto.INT16, np.int16),
    ("INT32", TensorProto.INT32, np.int32),
    ("INT64", TensorProto.INT64, np.int64),
    ("FP16", TensorProto.FLOAT16, np.float16),
    ("FP32", TensorProto.FLOAT, np.float32),
    ("FP64", TensorProto.DOUBLE, np.float64),
    ("BF16", TensorProto.BFLOAT16, None),
    ("BYTES", TensorProto.STRING, None),
]


def save(model, name, check=True, out_dir=HERE):
    if check:
        onnx.checker.check_model(model)
    path = os.path.join(out_dir, name)
    onnx.save(model, path)
    print(f"{name}: {os.path.getsize(path)} bytes")


def tensor_json(name, dt, arr):
    return {
        "name": name,
        "datatype": dt,
        "shape": list(arr.shape),
        "data": [v.item() for v in arr.reshape(-1)],
    }


def write_json(name, obj):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def weight(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def gen_mlp(rng, sizes=(64, 256, 256, 10), name="mlp", out_dir=HERE, reference=True):
    ws, bs, inits, nodes = [], [], [], []
    prev = "input"
    for i in range(len(sizes) - 1):
        w = weight(rng, (sizes[i], sizes[i + 1]), sizes[i])
        b = (rng.standard_normal(sizes[i + 1]) * 0.1).astype(np.float32)
        ws.append(w)
        bs.append(b)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if i == len(sizes) - 2 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out]))
        if i != len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="ebb-testdata"), name + ".onnx", out_dir=out_dir)
    if not reference:
        return

    x = rng.standard_normal((8, sizes[0])).astype(np.float32)
    h = x.astype(np.float64)
    for i in range(len(ws)):
        h = h @ ws[i].astype(np.float64) + bs[i].astype(np.float64)
        if i != len(ws) - 1:
            h = np.maximum(h, 0)
    write_json(
        "mlp_ref.json",
        {"inputs": [tensor_json("input", "FP32", x)], "outputs": [tensor_json("logits", "FP64", h)]},
    )


def conv2d(x, w, b, pad):
    """x: N,C,H,W; w: K,C,R,S; stride 1; float64."""
    n, c, hh, ww = x.shape
    k, _, r, s = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = hh + 2 * pad - r + 1, ww + 2 * pad - s + 1
    out = np.zeros((n, k, oh, ow))
    for i in range(r):
        for j in range(s):
            patch = xp[:, :, i : i + oh, j : j + ow]  # N,C,OH,OW
            out += np.einsum("nchw,kc->nkhw", patch, w[:, :, i, j])
    return out + b.reshape(1, k, 1, 1)


def maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def gen_cnn(rng):
    w1 = weight(rng, (8, 1, 3, 3), 9)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = weight(rng, (16, 8, 3, 3), 72)
    b2 = (rng.standard_normal(16) * 0.1).astype(np.float32)
    w3 = weight(rng, (16 * 7 * 7, 10), 16 * 7 * 7)
    b3 = (rng.standard_normal(10) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3")]]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="ebb-testdata"), "cnn.onnx")

    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    f64 = lambda a: a.astype(np.float64)
    h = maxpool2(np.maximum(conv2d(f64(x), f64(w1), f64(b1), 1), 0))
    h = maxpool2(np.maximum(conv2d(h, f64(w2), f64(b2), 1), 0))
    h = h.reshape(h.shape[0], -1) @ f64(w3) + f64(b3)
    write_json(
        "cnn_ref.json",
        {"inputs": [tensor_json("image", "FP32", x)], "outputs": [tensor_json("scores", "FP64", h)]},
    )


def gen_identity():
    # One model per datatype: y = Identity(x) with both dims dynamic, so the
    # tests can send any shape and batching can group by the second dim.
    for name, et, _ in DTYPES:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            f"identity_{name}",
            [helper.make_tensor_value_info("x", et, ["batch", "n"])],
            [helper.make_tensor_value_info("y", et, ["batch", "n"])],
        )
        save(helper.make_model(graph, opset_imports=OPSET), f"identity_{name}.onnx")


def gen_adapters():
    # Values onnxruntime_go cannot carry as they are, which the server routes
    # through nodes it appends: a scalar FP16 input and output, and an FP32
    # value whose shape (and so rank) the model leaves undeclared.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "scalar_FP16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "scalar_FP16.onnx")
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "unranked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    # The checker insists on declared shapes for graph outputs; ONNX Runtime
    # does not, and exported models without shape information exist.
    save(helper.make_model(graph, opset_imports=OPSET), "unranked.onnx", check=False)


def gen_cast():
    # FP32 -> FP16 and FP32 -> INT32 exercise conversions that are done by
    # ORT, with a static shape for the FP16 output.
    for name, et in [("FP16", TensorProto.FLOAT16), ("INT32", TensorProto.INT32)]:
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["y"], to=et)],
            f"cast_FP32_{name}",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", et, [2, 3])],
        )
        save(helper.make_model(graph, opset_imports=OPSET), f"cast_FP32_{name}.onnx")


def gen_add_mul():
    # Two inputs and two outputs: for the outputs filter and for batching of
    # multi-input requests.
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["product"])],
        "add_mul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, ["batch", 4]),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "add_mul.onnx")


def gen_batch_mixing():
    # Subtracts the mean over the batch dimension: every row depends on every
    # other row, so batching it with other callers would change answers. The
    # output's first dim is dynamic like the input's; tests use it to show
    # that batching stays off unless configured.
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "m"], ["y"]),
        ],
        "center",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "center.onnx")

    # The mean over the batch: the output's first dimension is dynamic but is
    # not the batch, which the batcher must notice when it splits outputs.
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)],
        "batch_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["one", 2])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "batch_mean.onnx")


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "--mlp":
        # --mlp DIR NAME D0 D1 ... : an MLP of any shape, for benchmarks.
        sizes = tuple(int(d) for d in sys.argv[4:])
        gen_mlp(np.random.default_rng(7), sizes, sys.argv[3], sys.argv[2], reference=False)
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--wide":
        gen_mlp(np.random.default_rng(7), (256, 1024, 1024, 10), "mlp_wide", sys.argv[2], reference=False)
        return
    rng = np.random.default_rng(20240611)
    gen_mlp(rng)
    gen_cnn(rng)
    gen_identity()
    gen_adapters()
    gen_cast()
    gen_add_mul()
    gen_batch_mixing()


if __name__ == "__main__":
    main()
