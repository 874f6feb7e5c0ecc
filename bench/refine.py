"""What soft edges cost: the guided-filter alpha (``output=alpha``) against the mask path's own post-processing.

    python -m bench.refine            # a few seconds; --repeats N for steadier medians

For a 500x375 and a 4000x3000 photo, times (median of ``--repeats``) ``app.postprocess.to_full_size`` (what
every request does after the model: bilinear up-sampling and the threshold) and ``models.imaging.refine.
guided_upsample`` as ``output=alpha`` calls it (colour guide, uint8, contrast), plus the grey guide, and
prints each as a ratio against ``to_full_size`` of the same photo in the same run, with the CPU's name.

A second column times the model's input taken from the full-size photo, as these answers need it:
``models.engine.segmenter.resize_for_model`` (halving first) against one ``cv2.resize`` INTER_AREA straight to the
model's side.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from app.postprocess import to_full_size
from app.rendering import ALPHA_CONTRAST
from bench.common import machine_info, markdown_table, median_ms, synthetic_photo
from models.engine.runtime import keep_freed_memory
from models.engine.segmenter import resize_for_model
from models.imaging.refine import guided_upsample

SIZES = ((500, 375), (4000, 3000))
MODEL_SIZE = 192  # the embedded model's input size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per row (default 9)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the service runs: big buffers are reused, not page-faulted afresh each time
    machine = machine_info()
    rng = np.random.default_rng(0)
    prob = np.clip(rng.normal(0.5, 0.3, (MODEL_SIZE, MODEL_SIZE)), 0, 1).astype(np.float32)
    rows = []
    for width, height in SIZES:
        photo = synthetic_photo(width, height)
        base = median_ms(lambda: to_full_size(prob, (width, height), 0.5), args.repeats)  # noqa: B023
        colour = median_ms(lambda: guided_upsample(prob, photo, contrast=ALPHA_CONTRAST,  # noqa: B023
                                                   dtype=np.uint8), args.repeats)
        gray = median_ms(lambda: guided_upsample(prob, photo, guide="gray", contrast=ALPHA_CONTRAST,  # noqa: B023
                                                 dtype=np.uint8), args.repeats)
        one_resize = median_ms(lambda: cv2.resize(photo, (MODEL_SIZE, MODEL_SIZE),  # noqa: B023
                                                  interpolation=cv2.INTER_AREA), args.repeats)
        halving = median_ms(lambda: resize_for_model(photo, MODEL_SIZE), args.repeats)  # noqa: B023
        rows.append([f"{width}x{height}", f"{base:.2f}", f"{colour:.1f} ({colour / base:.1f}x)",
                     f"{gray:.1f} ({gray / base:.1f}x)", f"{halving:.1f} / {one_resize:.1f}"])
    print(f"{machine.cpu}, {machine.usable_cores} usable cores, load average {machine.load_average}")
    print(markdown_table(["photo", "to_full_size ms (mask path)", "alpha, colour guide ms (ratio)",
                          "alpha, grey guide ms (ratio)", "model input ms: resize_for_model / one INTER_AREA"],
                         rows))


if __name__ == "__main__":
    main()
