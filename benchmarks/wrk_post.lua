-- wrk script of benchmarks/serving.py: POST the request body in FG_BODY (binary tensors) with its
-- Inference-Header-Content-Length FG_HLEN; print one machine-readable line at the end.
wrk.method = "POST"
local f = assert(io.open(os.getenv("FG_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("FG_HLEN")

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d socket_errors=%d status_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
