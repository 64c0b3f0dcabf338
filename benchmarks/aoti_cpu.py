"""Why an AOTInductor package of resnet18 (3x32x32) runs slower than eager PyTorch at batch 1 on this CPU:
the same network compiled several ways, each timed against eager and onnxruntime in one process.

Variants: cnnpipe's package (dynamic batch axis, freezing), a static batch of 1, freezing off, and
max-autotune; each at batch 1 and (where its batch axis allows) 64, with the thread count given.

    python benchmarks/aoti_cpu.py [--threads 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from cnnpipe.formats.base import batch_axis, quiet
from cnnpipe.nets.registry import build
from cnnpipe.stages.bench import time_calls


def images_per_s(call, x, seconds: float) -> float:
    with torch.no_grad():
        return len(x) / time_calls(lambda: call(x), seconds).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build("resnet18", 3, 32, 10).eval()
    x1, x64 = torch.randn(1, 3, 32, 32), torch.randn(64, 3, 32, 32)
    rows = [("eager PyTorch", images_per_s(model, x1, args.seconds), images_per_s(model, x64, args.seconds))]
    import torch._inductor as inductor

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        with quiet():
            torch.onnx.export(model, (x1,), str(onnx_path), dynamo=True, input_names=["input"],
                              dynamic_shapes=batch_axis())
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        rows.append(("onnxruntime", images_per_s(lambda x: session.run(None, {"input": x.numpy()}), x1, args.seconds),
                     images_per_s(lambda x: session.run(None, {"input": x.numpy()}), x64, args.seconds)))
        variants = {
            "aoti: dynamic batch, freezing (cnnpipe)": (True, {"freezing": True}),
            "aoti: static batch 1, freezing": (False, {"freezing": True}),
            "aoti: dynamic batch, no freezing": (True, {"freezing": False}),
            "aoti: dynamic batch, freezing, max-autotune": (True, {"freezing": True, "max_autotune": True}),
        }
        for label, (dynamic, configs) in variants.items():
            program = torch.export.export(model, (torch.randn(2, 3, 32, 32) if dynamic else x1,),
                                          dynamic_shapes=batch_axis() if dynamic else None)
            path = Path(tmp) / f"{len(rows)}.pt2"
            with quiet():
                inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
            package = inductor.aoti_load_package(str(path))
            rows.append((label, images_per_s(package, x1, args.seconds),
                         images_per_s(package, x64, args.seconds) if dynamic else float("nan")))
    eager1, eager64 = rows[0][1], rows[0][2]
    print(f"resnet18 3x32x32, torch {torch.__version__}, {args.threads} threads\n")
    print("| runtime | batch 1 img/s | x eager | batch 64 img/s | x eager |\n| --- | ---: | ---: | ---: | ---: |")
    for label, b1, b64 in rows:
        print(f"| {label} | {b1:,.0f} | {b1 / eager1:.2f} | {b64:,.0f} | {b64 / eager64:.2f} |"
              if np.isfinite(b64) else f"| {label} | {b1:,.0f} | {b1 / eager1:.2f} | – | – |")


if __name__ == "__main__":
    main()
