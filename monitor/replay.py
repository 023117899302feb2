"""Replay logged traffic offline through the serving code path and export the same metrics.

The traffic file is a Parquet dataset in the project's schema (docs/interfaces.md, "dataset.py"): one row per
(query, candidate), one column per model input. Each query's rows form one request, scored by the
same `ModelService.score` the server calls, recorded by the same `record_scored`, with telemetry
processed synchronously by the same `TelemetryWorker.process`. The metrics go to a Prometheus
text file (for node_exporter's textfile collector) or to a Pushgateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile

from fusionguard.batches import query_runs
from fusionguard.dataset import Batch, iter_batches
from fusionguard.source import ParquetSource, spans_files
from fusionguard.engine import EngineConfig, require_engine
from fusionguard.errors import InvalidInputError
from fusionguard.scorer import InvalidFeedsError
from fusionguard.monitor.app import record_scored
from fusionguard.monitor.metrics import MonitorMetrics
from fusionguard.monitor.service import ModelService, Scored, ServiceConfig
from fusionguard.monitor.telemetry import TelemetryConfig, TelemetryWorker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayConfig:
    data: str | Path  # traffic in the dataset schema (a file, a directory of files, a URI); each query's rows are one request
    service: ServiceConfig  # the model (file or registry), shadow, profile, telemetry share
    out: Path | None = None  # write the exposition here (exactly one of out / pushgateway)
    pushgateway: str | None = None  # e.g. http://127.0.0.1:9091
    job: str = "fusionguard_replay"  # Pushgateway job label
    batch_rows: int = 8192  # rows read from Parquet at a time (65,536 peaked at 1.3 GiB on the demo's 2.2 KB rows)
    progress: bool = False
    telemetry: TelemetryConfig = TelemetryConfig()  # drift window etc., as in `serve`
    engine: EngineConfig = EngineConfig()  # local: this process; ray: the model passes in actors (monitor/replay_ray.py)


@dataclass(frozen=True)
class ReplayResult:
    requests: int
    rows: int
    invalid: int  # requests whose tensors failed validation (counted by reason, as in the server)
    telemetry: int  # requests with telemetry
    seconds: float
    out: Path | None
    pushed_to: str | None
    exit_code: int = 0

    def summary(self) -> str:
        where = str(self.out) if self.out is not None else f"Pushgateway {self.pushed_to}"
        return (
            f"replayed {self.requests} requests ({self.rows} rows, {self.invalid} invalid, {self.telemetry} with "
            f"telemetry) in {self.seconds:.1f} s; metrics written to {where}"
        )


def iter_requests(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Cut a stream of batches into requests: runs of consecutive rows with the same query id
    (a run that straddles two batches is joined); `fusionguard.batches.query_runs`."""
    return query_runs(batches)


def _scored(service: ModelService, config: ReplayConfig
            ) -> Iterator[tuple[Batch, bool, Scored | InvalidFeedsError, float]]:
    """(request, telemetry drawn, its Scored or validation error, start time), in request order.
    The Ray engine reads the traffic itself (monitor/replay_ray.py); locally it is streamed here."""
    if config.engine.engine == "ray":
        from fusionguard.monitor.replay_ray import ray_scored

        yield from ray_scored(service, config.data, config.engine)
        return
    contract = service.state.scorer.contract
    if spans_files(config.data):  # the files in path order, read as one
        source = ParquetSource.open(config.data)
        batches = source.read(0, source.n_rows, contract, read_rows=config.batch_rows)
    else:
        batches = iter_batches(config.data, contract, batch_rows=config.batch_rows)
    for request in iter_requests(batches):
        t0 = time.perf_counter()
        telemetry = service.sampler()
        try:
            yield request, telemetry, service.score(request.feeds, telemetry), t0
        except InvalidFeedsError as err:
            yield request, telemetry, err, t0


def replay(config: ReplayConfig) -> ReplayResult:
    """Score the traffic file and export the metrics. See the module docstring.

    Raises:
        InvalidInputError: bad options, an unreadable model, traffic file or profile.
        DataValidationError: the traffic file lacks the model's input columns.
    """
    if (config.out is None) == (config.pushgateway is None):
        raise InvalidInputError("give exactly one of --out FILE or --pushgateway URL")
    if config.engine.engine == "local" and config.engine.workers is not None:
        raise InvalidInputError("--workers is the Ray engine's actor count here; the local replay scores requests in order")
    require_engine(config.engine)
    start = time.perf_counter()
    service = ModelService(config.service)
    registry = CollectorRegistry()
    metrics = MonitorMetrics.create(registry)
    worker = TelemetryWorker(service.name, metrics, service.shadow, config.telemetry)
    state = service.state
    if state is None:
        raise InvalidInputError(f"registry {config.service.registry} has no current model; promote one with `fusionguard promote`")
    metrics.model_info.labels(service.name, state.version, state.scorer.sha256, state.scorer.provider).set(1)
    metrics.model_ready.labels(service.name).set(1)
    n_req = n_rows = n_invalid = n_tel = 0
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="request", desc="replay", disable=None)  # a bar on terminals only, not in logs
    for request, telemetry, scored, t0 in _scored(service, config):
        n_req += 1
        n_rows += len(request.query_id)
        if isinstance(scored, InvalidFeedsError):
            n_invalid += 1
            metrics.invalid.labels(service.name, scored.reasons[0]).inc()
            metrics.requests.labels(service.name, "invalid").inc()
            continue
        record_scored(metrics, service.name, scored)
        if telemetry:
            worker.process(scored)
            n_tel += int(scored.telemetry)
        metrics.request_duration.labels(service.name).observe(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    worker.flush()
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(config.out), registry)
    else:
        try:
            push_to_gateway(config.pushgateway, job=config.job, registry=registry)
        except OSError as err:
            raise InvalidInputError(f"cannot push to the Pushgateway at {config.pushgateway}: {err}; check the URL") from None
    return ReplayResult(n_req, n_rows, n_invalid, n_tel, time.perf_counter() - start, config.out, config.pushgateway)
