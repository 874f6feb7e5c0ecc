"""``torch.compile`` in the engine: agreement with eager, which batch sizes it serves, and failing safely."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.engine.runtime import has_cpp_compiler, resolve_compile
from models.engine.segmenter import Segmenter
from training.cli import COMPILE_MIN_IMAGES, compile_mode_for

CPU = torch.device("cpu")


def test_compile_auto_follows_the_toolchain_on_the_cpu() -> None:
    assert resolve_compile("auto", CPU) is has_cpp_compiler()
    assert resolve_compile(" ON ", CPU) is True
    assert resolve_compile("off", CPU) is False


def test_compile_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        resolve_compile("fast", CPU)


def test_cli_auto_compiles_only_runs_long_enough_to_pay() -> None:
    assert compile_mode_for("auto", COMPILE_MIN_IMAGES - 1) == "off"
    assert compile_mode_for("auto", COMPILE_MIN_IMAGES) == "auto"
    assert compile_mode_for("on", 1) == "on"


@pytest.mark.slow
@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on the CPU needs a C++ compiler (g++/clang++)")
def test_compiled_engine_agrees_with_eager_and_serves_only_warmed_sizes(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    eager = Segmenter(checkpoint, device="cpu", precision="fp32", compile="off")
    compiled = Segmenter(checkpoint, device="cpu", precision="fp32", compile="on")
    assert not compiled.compiled  # nothing is compiled before warm-up
    compiled.warmup((2,))
    assert compiled.compiled and compiled.info.compiled
    batch = torch.randn(3, 3, checkpoint.image_size, checkpoint.image_size)
    torch.testing.assert_close(compiled.forward(batch[:2]), eager.forward(batch[:2]), atol=1e-4, rtol=1e-4)
    # Batch 3 was never warmed: it runs eager (no stall on a new compilation) and still agrees.
    torch.testing.assert_close(compiled.forward(batch), eager.forward(batch), atol=1e-4, rtol=1e-4)
    assert {shape[0] for shape in compiled._compiled_shapes} == {2}


def _broken_compile(model: torch.nn.Module, **_: object):
    def run(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("Compiler: g++ exited with status 1\nmore detail")

    return run


def test_compile_failure_under_auto_falls_back_to_eager(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("models.engine.segmenter.resolve_compile", lambda mode, device: True)
    monkeypatch.setattr(torch, "compile", _broken_compile)
    segmenter = Segmenter(load_checkpoint(tiny_checkpoint), device="cpu", precision="fp32", compile="auto")
    with caplog.at_level(logging.WARNING, logger="models.engine.segmenter"):
        segmenter.warmup((1,))
    assert not segmenter.compiled and not segmenter.info.compiled
    assert "torch.compile failed (Compiler: g++ exited with status 1)" in caplog.text
    prob = segmenter.forward(torch.zeros(1, 3, segmenter.image_size, segmenter.image_size))
    assert prob.shape == (1, segmenter.image_size, segmenter.image_size)


def test_compile_failure_when_forced_is_an_error(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", _broken_compile)
    segmenter = Segmenter(load_checkpoint(tiny_checkpoint), device="cpu", precision="fp32", compile="on")
    with pytest.raises(RuntimeError, match="torch.compile failed for batch 1: Compiler: g\\+\\+ exited"):
        segmenter.warmup((1,))


@pytest.mark.slow
@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile on the CPU needs a C++ compiler (g++/clang++)")
def test_one_compiled_model_serves_lanes_with_different_thread_counts_at_once(tiny_checkpoint: Path) -> None:
    """As the service's lanes use it: warmed on one thread with 2 threads and on another with 1, then called from
    both at the same time; every answer agrees with eager."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    eager = Segmenter(checkpoint, device="cpu", precision="fp32", compile="off")
    compiled = Segmenter(checkpoint, device="cpu", precision="fp32", compile="on")
    batches = [torch.randn(1, 3, checkpoint.image_size, checkpoint.image_size, generator=torch.Generator()
                           .manual_seed(seed)) for seed in range(6)]
    expected = [eager.forward(batch) for batch in batches]
    start = threading.Barrier(2)

    def lane(threads: int) -> list[torch.Tensor]:
        torch.set_num_threads(threads)
        compiled.warmup((1,))
        start.wait(60)
        return [compiled.forward(batch) for batch in batches for _ in range(3)][::3]

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lane, 2)
        second = pool.submit(lane, 1)
        answers = [first.result(300), second.result(300)]
    assert compiled.compiled
    for got in answers:
        for out, want in zip(got, expected, strict=True):
            torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_inductor_settings_hold_for_concurrent_users_and_are_restored_after() -> None:
    from torch._inductor import config as inductor_config

    from models.engine.segmenter import _frozen_weights

    before = (inductor_config.freezing, inductor_config.cpp_wrapper, inductor_config.cpp.dynamic_threads)
    inside, release = threading.Barrier(3), threading.Event()
    seen: list[tuple[bool, bool, bool]] = []

    def user() -> None:
        with _frozen_weights():
            inside.wait(30)
            seen.append((inductor_config.freezing, inductor_config.cpp_wrapper,
                         inductor_config.cpp.dynamic_threads))
            release.wait(30)

    threads = [threading.Thread(target=user) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait(30)
    release.set()
    for thread in threads:
        thread.join(30)
    assert seen == [(True, True, True)] * 2
    assert (inductor_config.freezing, inductor_config.cpp_wrapper, inductor_config.cpp.dynamic_threads) == before
