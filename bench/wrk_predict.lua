-- wrk script for POST /predict with real images (used by bench/loadgen.py).
--
--   wrk -t1 -c32 -d15s --timeout 30s -s bench/wrk_predict.lua URL -- multipart|raw MANIFEST
--
-- MANIFEST lists one image path per line. Every request body is built once in init();
-- request() only hands out the next pre-formatted request. done() prints one line
-- "BENCH_JSON {...}" with the counts, latency percentiles (microseconds) and the sum of
-- X-Batch-Size values, collected from every wrk thread.

local requests = {}
local next_index = 0
batch_sum = 0
batch_count = 0
statuses = ""
local status_counts = {}
local threads = {}
local thread_count = 0

local function read_file(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  return data
end

local function multipart(data, name)
  local boundary = "benchboundary7d1f0a9c3e5b"
  local body = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"\r\n'
    .. "Content-Type: image/jpeg\r\n\r\n"
    .. data .. "\r\n--" .. boundary .. "--\r\n"
  return "multipart/form-data; boundary=" .. boundary, body
end

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  local mode, manifest = args[1], args[2]
  for path in io.lines(manifest) do
    if path ~= "" then
      local data = read_file(path)
      local content_type, body = "image/jpeg", data
      if mode == "multipart" then
        content_type, body = multipart(data, path:match("[^/]+$"))
      end
      local headers = { ["Content-Type"] = content_type }
      table.insert(requests, wrk.format("POST", nil, headers, body))
    end
  end
  assert(#requests > 0, "no images in " .. manifest)
  next_index = ((thread_index or 0) * 7) % #requests
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function response(status, headers, body)
  if status ~= 200 then
    status_counts[status] = (status_counts[status] or 0) + 1
    local parts = {}
    for code, count in pairs(status_counts) do
      table.insert(parts, code .. ":" .. count)
    end
    statuses = table.concat(parts, ",")
  end
  local value = headers["x-batch-size"] or headers["X-Batch-Size"]
  if value then
    for size in string.gmatch(value, "%d+") do
      batch_sum = batch_sum + tonumber(size)
      batch_count = batch_count + 1
    end
  end
end

function done(summary, latency, requests_stats)
  local total_sum, total_count, all_statuses = 0, 0, {}
  for _, thread in ipairs(threads) do
    total_sum = total_sum + (thread:get("batch_sum") or 0)
    total_count = total_count + (thread:get("batch_count") or 0)
    local text = thread:get("statuses") or ""
    if text ~= "" then
      table.insert(all_statuses, text)
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, '
      .. '"batch_sum": %d, "batch_count": %d, "statuses": "%s"}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max, total_sum, total_count, table.concat(all_statuses, ",")
  ))
end
