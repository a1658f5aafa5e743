-- Prints wrk's latency percentiles (microseconds) and totals as one JSON line.
done = function(summary, latency, requests)
  local p = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    p[#p + 1] = string.format('"%s": %d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "percentiles_us": {%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.status + summary.errors.timeout,
    latency.mean, latency.max, table.concat(p, ", ")))
end
