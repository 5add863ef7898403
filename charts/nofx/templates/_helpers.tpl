{{/* Names and labels shared by every object of the release. */}}
{{- define "nofx.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nofx.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nofx.labels" -}}
{{ include "nofx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
nofx.dev/region: {{ .Values.region | quote }}
{{- end -}}

{{- define "nofx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nofx.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nofx.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* The restricted Pod Security Standard, for the operator and its migration hook. */}}
{{- define "nofx.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "nofx.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "nofx.databaseEnv" -}}
- name: NOFX_REGION
  value: {{ .Values.region | quote }}
{{- if .Values.database.existingSecret }}
- name: NOFX_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}
{{- end -}}

{{- /* What the operator does in the namespaces it watches: nothing on Secrets, no Pods created
      (the Job controller creates them), Pods only read for their termination messages. */ -}}
{{- define "nofx.namespacedRules" -}}
- apiGroups: ["nofx.dev"]
  resources: ["runs"]
  # create: child and scheduled Runs; delete: ttlSecondsAfterFinished and Schedules' history
  # limits; patch: cancel child Runs, and a Schedule's active Run (concurrencyPolicy Replace).
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: ["nofx.dev"]
  resources: ["agents", "templates", "schedules"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["nofx.dev"]
  resources: ["runs/status", "agents/status", "templates/status", "schedules/status"]
  verbs: ["get", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  # Step Pods (by label) are watched for the outputs of steps that succeeded, and a finished
  # Job's Pods listed when the watch did not see them.
  verbs: ["list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  # list: why a step's Job has no Pod (the Job controller's FailedCreate Events).
  verbs: ["list", "create", "patch"]
{{- if .Values.kueue.enabled }}
# Why a step is Queued: Kueue's Workload of its Job says (admitted, or insufficient quota ...).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end -}}

{{/* Whether the cluster serves MutatingAdmissionPolicy v1 (Kubernetes 1.36 and later). */}}
{{- define "nofx.servesMutatingPolicies" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" }}true{{ end }}
{{- end }}

{{/* The console: its own name and selector (its Pods must never match the operator's). */}}
{{- define "nofx.console.fullname" -}}
{{- printf "%s-console" (include "nofx.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nofx.console.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-console
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nofx.console.labels" -}}
{{ include "nofx.console.selectorLabels" . }}
app.kubernetes.io/component: console
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
nofx.dev/region: {{ .Values.region | quote }}
{{- end -}}

{{- define "nofx.console.serviceAccountName" -}}
{{- if .Values.console.serviceAccount.create -}}
{{- default (include "nofx.console.fullname" .) .Values.console.serviceAccount.name -}}
{{- else -}}
{{- required "console.serviceAccount.name is required when console.serviceAccount.create is false" .Values.console.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* All the console may do: read Runs, Agents, Templates, their Jobs and Events. */ -}}
{{- define "nofx.console.rules" -}}
- apiGroups: ["nofx.dev"]
  resources: ["runs", "agents", "templates"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
{{- end -}}
