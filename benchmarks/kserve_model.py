"""The KServe side of benchmarks/serving.py: a `kserve.Model` wrapping the same ONNX Runtime session.

Runs in its own virtual environment (benchmarks/.work/kserve-venv: kserve's pins conflict with
fusionguard's), never imported by fusionguard. Open Inference Protocol v2 over REST, binary
tensor outputs when the request asks for them, like the fusionguard server.

    benchmarks/.work/kserve-venv/bin/python benchmarks/kserve_model.py --model m.onnx --port 8080
"""

from __future__ import annotations

import argparse
import logging

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OrtRanker(kserve.Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads
        self.session = None  # created in the serving process: with workers > 1 the model is pickled to each
        self.outputs: list[str] = []
        self.ready = True

    def _session(self) -> ort.InferenceSession:
        if self.session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            self.outputs = [o.name for o in self.session.get_outputs()]
        return self.session

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        self._session()
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(self.outputs, feeds)
        binary = bool((payload.parameters or {}).get("binary_data_output", False))
        outputs = []
        for name, value in zip(self.outputs, results):
            out = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            out.set_data_from_numpy(value, binary_data=binary)
            outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or "",
                             use_binary_outputs=binary)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model = OrtRanker("ranker", args.model, args.threads)
    # As fusionguard runs in the benchmark: no per-request access or latency log lines, REST only.
    server = kserve.ModelServer(http_port=args.port, grpc_port=args.grpc_port, workers=args.workers,
                                enable_docs_url=False, enable_latency_logging=False, enable_grpc=False)
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).disabled = True
    server.start([model])


if __name__ == "__main__":
    main()
