-- Argo CD health of a nofx.dev/v1alpha1 Schedule, from its Ready and Missed conditions.
--
-- Argo CD runs this with gopher-lua (Lua 5.1) and only the base, table, package and a safe os
-- library, so the script uses no string or math functions. `obj` is the live object; any
-- field of it may be missing, so every lookup is guarded.
local hs = {}

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "suspended: no Run starts"
  return hs
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

-- Conditions written for an older spec say nothing about the current one.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to check the latest spec"
  return hs
end

local ready = nil
local missed = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    elseif condition.type == "Missed" then
      missed = condition
    end
  end
end

local function describe(condition, fallback)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
elseif ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = describe(ready, "the Schedule is not ready")
elseif missed ~= nil and missed.status == "True"
    and (missed.reason == "DeadlineExceeded" or missed.reason == "TooManyMissed") then
  -- A scheduled time went unstarted: the operator was down or the deadline is too short.
  hs.status = "Degraded"
  hs.message = describe(missed, "a scheduled time was missed")
else
  hs.status = "Healthy"
  hs.message = "scheduled"
  if status.nextScheduleTime ~= nil then
    hs.message = "next Run at " .. status.nextScheduleTime
  end
end
return hs
