"""`fusionguard monitor serve` and `fusionguard monitor replay`."""

from __future__ import annotations

from pathlib import Path

import click

from fusionguard.cli import DATA_LOCATION, LazyGroup, envvar, progress_option
from fusionguard.devices import DEVICES
from fusionguard.engine import EngineConfig, engine_options
from fusionguard.monitor.app import AppConfig
from fusionguard.monitor.batching import BatchingConfig
from fusionguard.monitor.service import ServiceConfig
from fusionguard.monitor.telemetry import TelemetryConfig

_path = click.Path(path_type=Path)


def _model_options(fn):  # noqa: ANN001, ANN201 - click decorator stack
    options = [
        click.option("--registry", type=_path, default=None, help="Serve this registry's current model.", **envvar("registry")),
        click.option("--model", type=_path, default=None, help="Serve this ONNX file (instead of --registry)."),
        click.option("--name", default="ranker", show_default=True, help="Model name in the OIP URLs and metric labels."),
        click.option("--shadow", type=_path, default=None, help="V1 model scoring the same candidates (windowed Spearman)."),
        click.option("--profile", type=_path, default=None, help="Reference profile.json for drift (default: the registry version's)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, **envvar("device")),
        click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ONNX Runtime decides)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _service(registry, model, name, shadow, profile, device, threads, share, seed=None) -> ServiceConfig:  # noqa: ANN001
    return ServiceConfig(
        model=model, registry=registry, name=name, shadow=shadow, profile=profile,
        telemetry_share=share, telemetry_seed=seed, device=device, threads=threads,
    )


_telemetry_seed = click.option(
    "--telemetry-seed", type=click.IntRange(min=0), default=None,
    help="Seed of the random per-request telemetry draw (reproducible sampling; default: fresh entropy).",
)


@click.group(cls=LazyGroup, lazy={})
def monitor() -> None:
    """Serve models over the Open Inference Protocol v2 with live modality-contribution telemetry.

    Example: fusionguard monitor serve --registry registry/ --port 8000
    """


@monitor.command()
@_model_options
@click.option("--telemetry-share", type=float, default=ServiceConfig.telemetry_share, show_default=True,
              help="Share of requests that also run the masked Shapley passes.")
@_telemetry_seed
@click.option("--max-concurrency", type=int, default=AppConfig.max_concurrency, show_default=True,
              help="Admitted inference requests at once; beyond it the server answers 503.")
@click.option("--max-body-bytes", type=int, default=AppConfig.max_body_bytes, show_default=True,
              help="Larger request bodies are answered 413.")
@click.option("--inference-threads", type=int, default=AppConfig.inference_threads, show_default=True,
              help="Concurrent ONNX Runtime calls.")
@click.option("--max-batch-rows", type=int, default=BatchingConfig.max_batch_rows, show_default=True,
              help="Dynamic batching: merge concurrent requests into one ONNX Runtime call of up to this many rows "
                   "(masked passes included); 0 turns it off.")
@click.option("--max-queue-delay-us", type=int, default=BatchingConfig.max_queue_delay_us, show_default=True,
              help="Dynamic batching: microseconds the oldest queued request waits for others to join.")
@click.option("--inline-rows", type=int, default=AppConfig.inline_rows, show_default=True,
              help="Without batching, a call of at most this many rows runs on the event loop (no thread hop).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes accepting on the port; /metrics merges them (prometheus_client multiprocess mode).")
@click.option("--telemetry-queue", type=int, default=TelemetryConfig.queue_size, show_default=True,
              help="Telemetry items waiting for the background worker; beyond it they are dropped and counted.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).", **envvar("host"))
@click.option("--port", type=int, default=8000, show_default=True, **envvar("port"))
@click.option("--graceful-timeout", type=float, default=30.0, show_default=True,
              help="Seconds shutdown waits for requests in flight.")
@click.option("--body-timeout", type=float, default=AppConfig.body_timeout_s, show_default=True,
              help="Seconds a request body may take to arrive; slower uploads are answered 408.")
@click.option("--max-body-readers", type=int, default=AppConfig.max_body_readers, show_default=True,
              help="Requests receiving their body at once; beyond it the server answers 503.")
@click.option("--registry-poll-seconds", type=float, default=None,
              help="Reload from --registry this often (default: only on SIGHUP or the load endpoint).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"]), default="info",
              show_default=True, help="Log lines (timestamped, on stderr) at this level and above.")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log one line per HTTP request (uvicorn's access log, at INFO).")
def serve(registry, model, name, shadow, profile, device, threads, telemetry_share, telemetry_seed,  # noqa: ANN001
          max_concurrency, max_body_bytes, inference_threads, telemetry_queue, host, port, graceful_timeout,
          body_timeout, max_body_readers, registry_poll_seconds, log_level, access_log, max_batch_rows,
          max_queue_delay_us, inline_rows, workers) -> None:
    """Serve a model over OIP v2 REST (JSON and binary tensors) with /metrics.

    POST /v2/repository/models/NAME/load, SIGHUP or --registry-poll-seconds reload the
    registry's current model. A registry with nothing promoted yet starts not-ready (503 on
    /v2/health/ready) and becomes ready after a promotion plus a reload.

    --workers N runs N processes on the port; SIGHUP, the load endpoint and the poll reach each.
    --max-batch-rows turns on dynamic batching (docs/monitor.md has the measurements).

    Example: fusionguard monitor serve --registry registry/ --registry-poll-seconds 30 --port 8000
    """
    from fusionguard.monitor.server import ServeConfig, serve as run_server

    _check_positive(max_concurrency=max_concurrency, max_body_bytes=max_body_bytes,
                    inference_threads=inference_threads, telemetry_queue=telemetry_queue,
                    max_body_readers=max_body_readers, body_timeout=body_timeout,
                    registry_poll_seconds=registry_poll_seconds, workers=workers)
    _check_non_negative(max_batch_rows=max_batch_rows, max_queue_delay_us=max_queue_delay_us, inline_rows=inline_rows)
    if registry_poll_seconds is not None and registry is None:
        from fusionguard.errors import InvalidInputError

        raise InvalidInputError("--registry-poll-seconds needs --registry; a --model file is reloaded by the load endpoint")
    config = ServeConfig(
        service=_service(registry, model, name, shadow, profile, device, threads, telemetry_share, telemetry_seed),
        app=AppConfig(max_concurrency=max_concurrency, max_body_bytes=max_body_bytes, inference_threads=inference_threads,
                      body_timeout_s=body_timeout, max_body_readers=max_body_readers,
                      registry_poll_s=registry_poll_seconds, inline_rows=inline_rows,
                      batching=BatchingConfig(max_batch_rows=max_batch_rows, max_queue_delay_us=max_queue_delay_us)),
        telemetry=TelemetryConfig(queue_size=telemetry_queue),
        host=host, port=port, graceful_timeout_s=graceful_timeout, log_level=log_level, access_log=access_log,
        workers=workers,
    )
    result = run_server(config)
    click.echo(result.summary())
    raise SystemExit(result.exit_code)


@monitor.command()
@_model_options
@click.option("--data", type=DATA_LOCATION, required=True,
              help="Logged traffic in the dataset schema: a Parquet file, a directory of Parquet files, or a URI.")
@click.option("--out", type=_path, default=None, help="Write the Prometheus exposition to this file.")
@click.option("--pushgateway", default=None, help="Push the metrics to this Pushgateway URL instead.")
@click.option("--job", default="fusionguard_replay", show_default=True, help="Pushgateway job label.")
@click.option("--telemetry-share", type=float, default=1.0, show_default=True,
              help="Share of requests with telemetry (offline, every request by default).")
@_telemetry_seed
@engine_options
@progress_option
def replay(registry, model, name, shadow, profile, device, threads, data, out, pushgateway, job,  # noqa: ANN001
           telemetry_share, telemetry_seed, engine, workers, ray_address, progress) -> None:
    """Score logged traffic through the serving code and write the same metrics.

    Each query's rows are one request. With --engine ray the model passes run in an actor pool
    on a Ray cluster and the metrics are the same (docs/scale.md).

    Example: fusionguard monitor replay --model v2.onnx --data traffic.parquet --out metrics.prom
    """
    from fusionguard.monitor.replay import ReplayConfig, replay as run_replay

    result = run_replay(
        ReplayConfig(
            data=data,
            service=_service(registry, model, name, shadow, profile, device, threads, telemetry_share, telemetry_seed),
            out=out, pushgateway=pushgateway, job=job, progress=progress,
            engine=EngineConfig(engine, workers, ray_address),
        )
    )
    click.echo(result.summary())
    raise SystemExit(result.exit_code)


def _check_positive(**values: float | None) -> None:
    """Counts must be >= 1, durations > 0 (and finite); None means "not given"."""
    from fusionguard.errors import InvalidInputError

    def bad_value(v: float) -> bool:
        return v < 1 if isinstance(v, int) else not 0 < v < float("inf")

    bad = [f"--{k.replace('_', '-')} must be {'>= 1' if isinstance(v, int) else 'a positive number of seconds'}, got {v}"
           for k, v in values.items() if v is not None and bad_value(v)]
    if bad:
        raise InvalidInputError("; ".join(bad))


def _check_non_negative(**values: int) -> None:
    from fusionguard.errors import InvalidInputError

    bad = [f"--{k.replace('_', '-')} must be >= 0, got {v}" for k, v in values.items() if v < 0]
    if bad:
        raise InvalidInputError("; ".join(bad))
