{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "xz-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name, truncated to leave room for suffixes such as "-redis" and KubeRay's
"-head-svc" (names of Services must be DNS labels of at most 63 characters).
*/}}
{{- define "xz-serve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "xz-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: stable for the life of a release.
*/}}
{{- define "xz-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xz-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Common labels.
*/}}
{{- define "xz-serve.labels" -}}
helm.sh/chart: {{ include "xz-serve.chart" . }}
{{ include "xz-serve.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xz-serve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of pods: no chart or app version. KubeRay rolls out a whole new cluster whenever the
cluster spec (pod templates included) changes, and a chart bump alone should not cause that (nor a
Redis restart).
*/}}
{{- define "xz-serve.podLabels" -}}
{{ include "xz-serve.selectorLabels" . }}
app.kubernetes.io/part-of: xz-serve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The xz_serve image.
*/}}
{{- define "xz-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{/*
The Serve config: --set-file serveConfigV2=... or the chart's copy of deployments/prod.yaml.
*/}}
{{- define "xz-serve.serveConfig" -}}
{{- $config := .Values.serveConfigV2 | default (.Files.Get "files/serve-config.yaml") -}}
{{- if not (trim $config) -}}
{{- fail "serveConfigV2 is empty and files/serve-config.yaml is missing" -}}
{{- end -}}
{{- $config -}}
{{- end -}}

{{/*
The Serve HTTP port, read from the Serve config's http_options (Serve's default: 8000).
*/}}
{{- define "xz-serve.servePort" -}}
{{- $config := include "xz-serve.serveConfig" . | fromYaml -}}
{{- if hasKey $config "Error" -}}
{{- fail (printf "serveConfigV2 is not valid YAML: %s" $config.Error) -}}
{{- end -}}
{{- if not $config.applications -}}
{{- fail "serveConfigV2 has no applications" -}}
{{- end -}}
{{- $http := $config.http_options | default dict -}}
{{- $http.port | default 8000 | int -}}
{{- end -}}

{{/*
Ray process flags: files/ray.env (a copy of deployments/ray.env) overlaid with .Values.rayEnv, as a
YAML map. Ray reads them when its processes start, so they go on every Ray container.
*/}}
{{- define "xz-serve.rayEnvMap" -}}
{{- $env := dict -}}
{{- range .Files.Lines "files/ray.env" -}}
{{- $line := trim . -}}
{{- if and $line (not (hasPrefix "#" $line)) (contains "=" $line) -}}
{{- $kv := splitn "=" 2 $line -}}
{{- $_ := set $env (trim $kv._0) (trim $kv._1) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .Values.rayEnv -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
Env entries of the Ray flags.
*/}}
{{- define "xz-serve.rayEnv" -}}
{{- range $key, $value := (include "xz-serve.rayEnvMap" . | fromYaml) }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
The Secret (and key) that holds the Redis URL.
*/}}
{{- define "xz-serve.redisSecretName" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- printf "%s-redis" (include "xz-serve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "xz-serve.redisSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- else -}}
redis-url
{{- end -}}
{{- end -}}

{{/*
Host of the in-release Redis (its headless Service; one pod).
*/}}
{{- define "xz-serve.redisHost" -}}
{{- printf "%s-redis.%s.svc" (include "xz-serve.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
Env entries of the app: Ray flags, the Redis URL from a Secret, OpenTelemetry, extra XZ_* settings.
*/}}
{{- define "xz-serve.appEnv" -}}
{{- include "xz-serve.rayEnv" . }}
- name: {{ .Values.redis.urlEnvName }}
  valueFrom:
    secretKeyRef:
      name: {{ include "xz-serve.redisSecretName" . }}
      key: {{ include "xz-serve.redisSecretKey" . }}
{{- if .Values.cacheRedis.enabled }}
- name: {{ .Values.cacheRedis.urlEnvName }}
  value: {{ printf "redis://%s-cache.%s.svc:6379/0" (include "xz-serve.fullname" .) .Release.Namespace | quote }}
{{- else if .Values.cacheRedis.external.url }}
- name: {{ .Values.cacheRedis.urlEnvName }}
  value: {{ .Values.cacheRedis.external.url | quote }}
{{- end }}
{{- with .Values.otel.serviceName }}
- name: OTEL_SERVICE_NAME
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.otel.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.otel.headersSecret.name }}
      key: {{ .Values.otel.headersSecret.key }}
{{- end }}
{{- range $key, $value := .Values.xz.env }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Container ports of a Ray pod. Usage: include "xz-serve.rayPorts" (list $ "head")
*/}}
{{- define "xz-serve.rayPorts" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- if eq $role "head" }}
- name: gcs-server
  containerPort: 6379
  protocol: TCP
- name: dashboard
  containerPort: 8265
  protocol: TCP
- name: client
  containerPort: 10001
  protocol: TCP
{{- end }}
- name: serve
  containerPort: {{ include "xz-serve.servePort" $ }}
  protocol: TCP
- name: metrics
  containerPort: {{ $.Values.metrics.port }}
  protocol: TCP
{{- if $.Values.metrics.haproxy }}
- name: haproxy-metrics
  containerPort: 9101
  protocol: TCP
{{- end }}
{{- end -}}

{{/*
Annotations of a Ray pod: Prometheus scraping plus the user's. Usage: (list $ .Values.head.annotations)
*/}}
{{- define "xz-serve.rayPodAnnotations" -}}
{{- $ := index . 0 -}}
{{- $annotations := dict -}}
{{- if $.Values.metrics.podAnnotations -}}
{{- $_ := set $annotations "prometheus.io/scrape" "true" -}}
{{- $_ := set $annotations "prometheus.io/port" ($.Values.metrics.port | toString) -}}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $annotations = merge (deepCopy (index . 1 | default dict)) $annotations -}}
{{- if $annotations }}
{{- toYaml $annotations }}
{{- end }}
{{- end -}}

{{/*
Checks of values that templates alone cannot express.
*/}}
{{- define "xz-serve.validate" -}}
{{- $w := .Values.worker -}}
{{- if gt (int $w.minReplicas) (int $w.maxReplicas) -}}
{{- fail "worker.minReplicas must not exceed worker.maxReplicas" -}}
{{- end -}}
{{- if or (lt (int $w.replicas) (int $w.minReplicas)) (gt (int $w.replicas) (int $w.maxReplicas)) -}}
{{- fail "worker.replicas must lie within worker.minReplicas..worker.maxReplicas" -}}
{{- end -}}
{{- if not (has .Values.rayService.upgradeStrategy.type (list "NewCluster" "NewClusterWithIncrementalUpgrade" "None")) -}}
{{- fail "rayService.upgradeStrategy.type must be NewCluster, NewClusterWithIncrementalUpgrade or None" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.existingSecret) (not .Values.redis.external.url) -}}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- $gcs := .Values.gcsFaultTolerance -}}
{{- if and $gcs.enabled (not $gcs.redis.enabled) (not $gcs.redis.address) -}}
{{- fail "gcsFaultTolerance.redis.enabled is false: set gcsFaultTolerance.redis.address (host:port of the GCS's own Redis)" -}}
{{- end -}}
{{- if and $gcs.enabled (hasKey .Values.head.rayStartParams "redis-password") -}}
{{- fail "head.rayStartParams.redis-password: the GCS Redis password comes from gcsFaultTolerance.redis.auth (KubeRay refuses both)" -}}
{{- end -}}
{{- $pdb := .Values.worker.podDisruptionBudget -}}
{{- if and $pdb.enabled (eq (toString $pdb.maxUnavailable) "") (eq (toString $pdb.minAvailable) "") -}}
{{- fail "worker.podDisruptionBudget: set maxUnavailable or minAvailable" -}}
{{- end -}}
{{- if and $pdb.enabled (ne (toString $pdb.maxUnavailable) "") (ne (toString $pdb.minAvailable) "") -}}
{{- fail "worker.podDisruptionBudget: set only one of maxUnavailable and minAvailable" -}}
{{- end -}}
{{- end -}}

{{/*
The model replica's Serve sizing, read from the Serve config: the first application's
`args.nlu.num_cpus` (XzSettings' default, 1, when absent), as millicores.
*/}}
{{- define "xz-serve.replicaMilliCpu" -}}
{{- $config := include "xz-serve.serveConfig" . | fromYaml -}}
{{- $app := first $config.applications -}}
{{- $args := $app.args | default dict -}}
{{- $nlu := $args.nlu | default dict -}}
{{- $cpus := 1.0 -}}
{{- if hasKey $nlu "num_cpus" -}}
{{- $cpus = $nlu.num_cpus | float64 -}}
{{- end -}}
{{- round (mulf $cpus 1000) 0 | int -}}
{{- end -}}

{{/*
A worker pod's size, from the replicas it is meant to hold (`worker.sizing`): Ray's `num-cpus` is
what those replicas reserve (so Ray never places more of them), and the container's requests and
limits add Ray's own processes to the replicas' CPUs and measured memory. YAML:
{numCpus, cpu, memory}.
*/}}
{{- define "xz-serve.workerSizing" -}}
{{- $s := .Values.worker.sizing -}}
{{- $replicaMilli := include "xz-serve.replicaMilliCpu" . | int -}}
{{- $podMilli := mul (int $s.replicasPerPod) $replicaMilli -}}
{{- if lt (int $s.replicasPerPod) 1 -}}
{{- fail "worker.sizing.replicasPerPod must be at least 1" -}}
{{- end -}}
{{- if ne (mod $podMilli 1000) 0 -}}
{{- fail (printf "worker.sizing.replicasPerPod (%d) times the replica's num_cpus (%dm) must be whole CPUs: Ray's num-cpus is an integer" (int $s.replicasPerPod) $replicaMilli) -}}
{{- end -}}
numCpus: {{ div $podMilli 1000 | quote }}
cpu: {{ printf "%dm" (add $podMilli (int $s.overheadMilliCpu)) | quote }}
memory: {{ printf "%dMi" (add (mul (int $s.replicasPerPod) (int $s.replicaMemoryMi)) (int $s.overheadMemoryMi)) | quote }}
{{- end -}}

{{/*
Worker container resources: `worker.resources` when given, else requests = limits from the sizing
(Guaranteed QoS: a replica is never throttled below, or killed above, what it was sized for).
*/}}
{{- define "xz-serve.workerResources" -}}
{{- if .Values.worker.resources -}}
{{- toYaml .Values.worker.resources -}}
{{- else -}}
{{- $size := include "xz-serve.workerSizing" . | fromYaml -}}
requests:
  cpu: {{ $size.cpu | quote }}
  memory: {{ $size.memory | quote }}
limits:
  cpu: {{ $size.cpu | quote }}
  memory: {{ $size.memory | quote }}
{{- end -}}
{{- end -}}

{{/*
`ray start` parameters of the workers: num-cpus from the sizing, overridden by worker.rayStartParams.
*/}}
{{- define "xz-serve.workerStartParams" -}}
{{- $size := include "xz-serve.workerSizing" . | fromYaml -}}
{{- $params := merge (deepCopy .Values.worker.rayStartParams) (dict "num-cpus" $size.numCpus) -}}
{{- range $key, $value := $params }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Labels that select this release's worker pods (the PodDisruptionBudget, the topology spread).
*/}}
{{- define "xz-serve.workerSelectorLabels" -}}
{{ include "xz-serve.selectorLabels" . }}
app.kubernetes.io/component: ray-worker
{{- end -}}

{{/*
The GCS's Redis: its address, and the Secret (and key) holding its password ("" when it has none).
*/}}
{{- define "xz-serve.gcsRedisAddress" -}}
{{- if .Values.gcsFaultTolerance.redis.enabled -}}
{{- printf "%s-gcs.%s.svc:6379" (include "xz-serve.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.gcsFaultTolerance.redis.address -}}
{{- end -}}
{{- end -}}

{{- define "xz-serve.gcsRedisSecretName" -}}
{{- $auth := .Values.gcsFaultTolerance.redis.auth -}}
{{- if $auth.existingSecret -}}
{{- $auth.existingSecret -}}
{{- else if or .Values.gcsFaultTolerance.redis.enabled $auth.password -}}
{{- printf "%s-gcs" (include "xz-serve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "xz-serve.gcsRedisSecretKey" -}}
{{- if .Values.gcsFaultTolerance.redis.auth.existingSecret -}}
{{- .Values.gcsFaultTolerance.redis.auth.existingSecretKey -}}
{{- else -}}
password
{{- end -}}
{{- end -}}
