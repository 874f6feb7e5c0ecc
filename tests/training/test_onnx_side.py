"""training.onnx_side: a traced model with frozen Resize sizes runs at another side after the rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.onnx_side import main, rescale_traced_sides

onnx = pytest.importorskip("onnx", reason="the rewrite needs the onnx package (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="running the model needs onnxruntime (pip install -e '.[onnx]')")


def traced_like(path: Path, side: int = 64) -> Path:
    """out = x + Resize(MaxPool2(x), sizes = Shape(x)[:2] ++ [side, side]): the pattern a tracer freezes."""
    from onnx import TensorProto, helper, numpy_helper

    def constant(name: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))

    nodes = [
        helper.make_node("MaxPool", ["input"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["pooled"], ["shape"]),
        constant("start", [0]), constant("end", [2]), constant("frozen", [side, side]),
        helper.make_node("Slice", ["shape", "start", "end"], ["batch_channels"]),
        helper.make_node("Concat", ["batch_channels", "frozen"], ["sizes"], axis=0),
        helper.make_node("Resize", ["pooled", "", "", "sizes"], ["up"], mode="nearest"),
        helper.make_node("Add", ["input", "up"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "traced", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, side, side])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, side, side])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))  # stores the traced side's shapes, as exports do
    return path


def reference(x: np.ndarray) -> np.ndarray:
    """What the model computes, at any side: x + nearest up-sampling of its 2x2 max-pool."""
    pooled = x.reshape(x.shape[0], x.shape[1], x.shape[2] // 2, 2, x.shape[3] // 2, 2).max(axis=(3, 5))
    return x + pooled.repeat(2, axis=2).repeat(2, axis=3)


def test_the_rewritten_model_computes_the_same_thing_at_the_new_side(tmp_path: Path) -> None:
    source = traced_like(tmp_path / "traced.onnx", side=64)
    target = tmp_path / "at48.onnx"
    assert rescale_traced_sides(source, target, 48) == 1
    x = np.random.default_rng(0).random((1, 1, 48, 48), dtype=np.float32)
    out = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (1, 1, 48, 48)
    assert np.allclose(out, reference(x))
    rewritten = onnx.load(str(target)).graph
    assert [d.dim_value for d in rewritten.input[0].type.tensor_type.shape.dim] == [1, 1, 48, 48]
    assert onnx.load(str(source)).graph.value_info and not rewritten.value_info  # no stale 64-side shapes
    again = tmp_path / "again.onnx"
    rescale_traced_sides(source, again, 48)
    assert again.read_bytes() == target.read_bytes()  # deterministic: a record's sha256 names it


def test_the_original_fails_at_another_side_which_is_why_the_rewrite_exists(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")
    import openvino as ov

    source = traced_like(tmp_path / "traced.onnx", side=64)
    core = ov.Core()
    model = core.read_model(str(source))
    with pytest.raises(RuntimeError):
        model.reshape({"input": [1, 1, 48, 48]})
        core.compile_model(model, "CPU")
    target = tmp_path / "at48.onnx"
    rescale_traced_sides(source, target, 48)
    x = np.random.default_rng(1).random((1, 1, 48, 48), dtype=np.float32)
    compiled = core.compile_model(core.read_model(str(target)), "CPU")
    # OpenVINO computes in bf16 on CPUs that have it (AVX512_BF16, AMX): three significant digits
    assert np.allclose(compiled({"input": x})[compiled.output(0)], reference(x), rtol=1e-2, atol=1e-2)


def test_the_command_refuses_a_missing_model_and_a_tiny_side(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none.onnx"), str(tmp_path / "out.onnx"), "--side", "256"]) == 2
    assert "model not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "none.onnx"), str(tmp_path / "out.onnx"), "--side", "8"])
    assert exc.value.code == 2


def test_a_file_that_is_not_onnx_or_a_target_under_a_file_is_one_line(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    assert main([str(broken), str(tmp_path / "out.onnx"), "--side", "256"]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err and not (tmp_path / "out.onnx").exists()
    model = traced_like(tmp_path / "traced.onnx")
    assert main([str(model), str(broken / "out.onnx"), "--side", "48"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
