-- Argo CD health of a nofx.dev/v1alpha1 Template, from its Ready condition.
--
-- Argo CD runs this with gopher-lua (Lua 5.1) and only the base, table, package and a safe os
-- library, so the script uses no string or math functions. `obj` is the live object; any
-- field of it may be missing, so every lookup is guarded. agent.lua is the same check.
local hs = {}

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

-- A Ready condition written for an older spec says nothing about the current one.
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
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end

-- "Reason: message", with whichever parts the condition has.
local function describe(condition, fallback)
  local reason = condition.reason
  local message = condition.message
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  if reason ~= nil and reason ~= "" then
    return reason
  end
  return fallback
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "the Template is ready")
elseif ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "the Template is not ready")
else
  hs.status = "Progressing"
  hs.message = describe(ready, "the Template is being checked")
end
return hs
