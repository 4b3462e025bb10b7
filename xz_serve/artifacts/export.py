"""Export the trained network to ONNX, fuse it for ONNX Runtime, and quantize it to INT8."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from xz_serve.artifacts.network import OUTPUT_NAMES, NluNetwork


def export_onnx(network: NluNetwork, path: Path) -> None:
    """Trace the eval-mode network with dynamic batch and sequence axes."""
    network.eval()
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    dynamic = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        network,
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            "input_ids": dynamic,
            "attention_mask": dynamic,
            **{name: {0: "batch"} for name in OUTPUT_NAMES},
        },
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )


def fuse(path_in: Path, path_out: Path, num_heads: int, hidden_size: int) -> None:
    """ONNX Runtime's BERT fusions (LayerNorm, GELU, bias adds) before quantizing: faster graph."""
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimized = optimize_model(
        str(path_in), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1
    )
    optimized.save_model_to_file(str(path_out))


def quantize(path_in: Path, path_out: Path, per_channel: bool) -> None:
    """Dynamic INT8: weights (MatMul and the embedding Gathers) stored as int8, activations
    quantized per batch at run time. The heads stay FP32: tiny, and most sensitive to rounding."""
    model = onnx.load(str(path_in))
    heads = [
        node.name
        for node in model.graph.node
        if node.op_type in {"MatMul", "Gemm"} and any("head" in i for i in node.input)
    ]
    quantize_dynamic(
        str(path_in),
        str(path_out),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=["MatMul", "Gather", "Attention"],
        nodes_to_exclude=heads,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
