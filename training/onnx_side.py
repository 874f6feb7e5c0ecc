"""Run a traced ONNX model at another square input side by rescaling the sizes its tracer froze.

    python -m training.onnx_side isnet.onnx isnet-768.onnx --side 768

A model exported by tracing (ISNet's ONNX is one) often up-samples with ``Resize(x, sizes=Concat(Shape(x)[:2],
[32, 32]))``: the spatial sizes are constants of the side it was traced at (1024), so the file only runs at that
side. This rewrites each such constant pair to ``round(value x side / traced side)``, sets the input and output
sides, and drops the stored intermediate shapes, so OpenVINO (which needs static shapes) compiles it at ``side``.
A salient-object teacher at 768 instead of 1024 costs about half as much per photo; whether its labels are as good
is for the caller to measure (the model card does). The rewrite is deterministic: the same input gives the same
bytes, so a labelling record's sha256 identifies the rewritten file.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from training.cli import at_least, check_can_write, run_cli, setup_logging

__all__ = ["rescale_traced_sides"]

log = logging.getLogger("training.onnx_side")
MIN_FROZEN_SIZE = 16  # smaller constant pairs are not spatial sizes of a traced feature map (kernel sizes, axes...)


def rescale_traced_sides(source: Path, target: Path, side: int) -> int:
    """Write ``source`` rewritten for a ``side`` x ``side`` input to ``target``; the number of sizes rewritten."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        raise ValueError(f"{source} is not a readable ONNX model: {exc}") from None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[2:]) or dims[2].dim_value != dims[3].dim_value:
        raise ValueError(f"{source} does not take a fixed square NCHW input")
    traced = dims[2].dim_value
    ratio = side / traced
    producers = {output: node for node in model.graph.node for output in node.output}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue  # no ``sizes`` input: scales follow the input by themselves
        concat = producers.get(node.input[3])
        if concat is None or concat.op_type != "Concat":
            continue
        for name in concat.input:
            constant = producers.get(name)
            if constant is None or constant.op_type != "Constant":
                continue
            tensor = constant.attribute[0].t
            values = numpy_helper.to_array(tensor)
            if values.shape != (2,) or values.min() < MIN_FROZEN_SIZE:
                continue
            scaled = np.array([int(round(v * ratio)) for v in values], dtype=values.dtype)
            tensor.CopyFrom(numpy_helper.from_array(scaled, tensor.name))
            rewritten += 1
    for value in [*model.graph.input, *model.graph.output]:
        for dim in list(value.type.tensor_type.shape.dim)[2:]:
            if dim.dim_value == traced or dim.HasField("dim_param"):
                dim.ClearField("dim_param")
                dim.dim_value = side
            elif dim.dim_value:
                dim.dim_value = int(round(dim.dim_value * ratio))
    del model.graph.value_info[:]  # shapes stored for the traced side would contradict the new ones
    onnx.save(model, str(target))
    return rewritten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.onnx_side", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the traced ONNX model")
    parser.add_argument("target", type=Path, help="where to write the rewritten model")
    parser.add_argument("--side", type=at_least(32), required=True, help="the new square input side")
    args = parser.parse_args(argv)
    setup_logging()

    def run() -> int:
        if not args.source.is_file():
            raise FileNotFoundError(f"model not found: {args.source}")
        check_can_write(args.target, folder=False)
        count = rescale_traced_sides(args.source, args.target, args.side)
        print(f"wrote {args.target}: {count} frozen Resize size(s) rescaled to a {args.side}x{args.side} input")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
