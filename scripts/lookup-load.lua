-- The load of the lookup benchmarks (scripts/bench-lookup.sh and
-- scripts/bench-lookup-ab.sh), loaded by the wrk script each of them writes
-- after it sets `keys_file`. Environment: PATH_PREFIX and PATH_SUFFIX around
-- each key, AUTH a bearer token (none when empty).
--
-- Every request is formatted once, when wrk starts, and drawn at random
-- after that: wrk shares the two cores with the server, and formatting a
-- request per call in Lua cost it about 3 us of CPU a request. Each thread
-- draws its own sequence (seeded alike, the threads would ask for the same
-- keys in the same order).
local prefix = os.getenv("PATH_PREFIX") or ""
local suffix = os.getenv("PATH_SUFFIX") or ""
local auth = os.getenv("AUTH")
local headers = {}
if auth and auth ~= "" then headers["Authorization"] = "Bearer " .. auth end
local prepared = {}
for line in io.lines(keys_file) do
  prepared[#prepared + 1] = wrk.format("GET", prefix .. line .. suffix, headers)
end
local n, random = #prepared, math.random
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
init = function(args)
  math.randomseed(os.time() + thread_number * 104729)
end
request = function()
  return prepared[random(n)]
end
