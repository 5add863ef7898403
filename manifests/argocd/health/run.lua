-- Argo CD health of a nofx.dev/v1alpha1 Run, from the status the operator writes.
--
-- Argo CD runs this with gopher-lua (Lua 5.1) and only the base, table, package and a safe os
-- library, so the script uses no string or math functions. `obj` is the live object; any
-- field of it may be missing, so every lookup is guarded.
local hs = {}

local status = obj.status
local phase = nil
if status ~= nil then
  phase = status.phase
end

if phase == nil or phase == "" then
  -- Just applied: the operator has not written a status yet.
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

-- The operator's summary, prefixed with the step count when there is one: "2/5 steps: ...".
local message = status.message
if message == nil or message == "" then
  message = "the Run is " .. phase
end
if status.progress ~= nil and status.progress ~= "" then
  message = status.progress .. " steps: " .. message
end
hs.message = message

local suspended = obj.spec ~= nil and obj.spec.suspend == true

-- Held back because its account spent its monthly budget: it waits for an admin (or the next
-- month), not for work in progress.
local held = false
if phase == "Pending" and status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" and condition.reason == "AccountBudgetExceeded" then
      held = true
    end
  end
end

if (phase == "Running" and suspended) or held then
  -- A suspended Run keeps phase Running but starts nothing new until a person resumes it.
  hs.status = "Suspended"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" then
  -- Queued: its steps wait for Kueue; the message is Kueue's (e.g. insufficient quota).
  hs.status = "Progressing"
elseif phase == "WaitingApproval" then
  -- Waits for a person (spec.approvals), like a suspended Argo Workflow.
  hs.status = "Suspended"
elseif phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Cancelled" then
  hs.status = "Degraded"
else
  -- A phase this script does not know yet (a newer operator): say so rather than guess.
  hs.status = "Unknown"
  hs.message = "unknown phase " .. phase .. ": " .. message
end
return hs
