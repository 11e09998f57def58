{{/* Chart name, truncated to a DNS label. */}}
{{- define "herd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every resource. Truncated to 40 characters so that suffixes such as
"-worker-<group>" and "-redis-headless" still fit in a 63-character DNS label.
*/}}
{{- define "herd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "herd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "herd.labels" -}}
helm.sh/chart: {{ include "herd.chart" . }}
app.kubernetes.io/name: {{ include "herd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "api"). */}}
{{- define "herd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "herd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference; call with (dict "ctx" $ "image" <override map or nil>). */}}
{{- define "herd.image" -}}
{{- $own := .image | default dict }}
{{- $img := merge (deepCopy $own) .ctx.Values.image }}
{{- /* a group naming its own repository or tag is another image: the global digest does not pin it */}}
{{- $digest := $img.digest }}
{{- if or $own.repository $own.tag $own.digest }}
{{- $digest = $own.digest }}
{{- end }}
{{- include "herd.imageRef" (dict "repository" $img.repository "tag" ($img.tag | default .ctx.Chart.AppVersion) "digest" $digest) }}
{{- end }}

{{/*
repository:tag, or repository@digest when a digest is set (it pins the image whatever the tag now points at).
Call with (dict "repository" R "tag" T "digest" D).
*/}}
{{- define "herd.imageRef" -}}
{{- if .digest }}
{{- if not (regexMatch "^[a-z0-9]+:[a-f0-9]{32,}$" (toString .digest)) }}
{{- fail (printf "image digest %q is not of the form sha256:<hex>" (toString .digest)) }}
{{- end }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{- define "herd.imagePullPolicy" -}}
{{- $img := merge (deepCopy (.image | default dict)) .ctx.Values.image }}
{{- $img.pullPolicy }}
{{- end }}

{{/* Names of the chart-managed objects. */}}
{{- define "herd.secretName" -}}
{{- include "herd.fullname" . }}
{{- end }}

{{- define "herd.redisName" -}}
{{- printf "%s-redis" (include "herd.fullname" .) }}
{{- end }}

{{- define "herd.scriptsName" -}}
{{- printf "%s-scripts" (include "herd.fullname" .) }}
{{- end }}

{{- define "herd.modelsClaimName" -}}
{{- .Values.models.persistence.existingClaim | default (printf "%s-models" (include "herd.fullname" .)) }}
{{- end }}

{{/*
HERD_DRAIN_TIMEOUT_S from a pod's one shutdown value: terminationGracePeriodSeconds less the preStop delay and a
5 s margin, so the process ends by itself before the kubelet's SIGKILL. Call with (dict "grace" N "delay" N).
*/}}
{{- define "herd.drainSeconds" -}}
{{- $drain := sub (sub (int .grace) (int .delay)) 5 }}
{{- if lt $drain 1 }}
{{- fail (printf "terminationGracePeriodSeconds %d leaves no time to drain after a %d s preStop delay and a 5 s margin" (int .grace) (int .delay)) }}
{{- end }}
{{- $drain }}
{{- end }}

{{- define "herd.filesClaimName" -}}
{{- .Values.files.persistence.existingClaim | default (printf "%s-files" (include "herd.fullname" .)) }}
{{- end }}

{{/* "true" when more than one API pod may run at once: then they must share one files volume. */}}
{{- define "herd.apiShared" -}}
{{- or .Values.api.autoscaling.enabled (gt (int .Values.api.replicas) 1) }}
{{- end }}

{{- define "herd.authSecretName" -}}
{{- .Values.auth.apiKeysSecret | default (printf "%s-auth" (include "herd.fullname" .)) }}
{{- end }}

{{/* Secret and key holding the bundled Redis's password. */}}
{{- define "herd.redisPasswordSecret" -}}
{{- .Values.redis.auth.existingSecret | default (include "herd.secretName" .) }}
{{- end }}

{{- define "herd.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else -}}
redis-password
{{- end }}
{{- end }}

{{/*
The bundled Redis's password: the configured one, else the one already stored in the release's Secret (so an
upgrade keeps it), else a new random one.
*/}}
{{- define "herd.redisPassword" -}}
{{- if .Values.redis.auth.password }}
{{- .Values.redis.auth.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "herd.secretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "redis-password") }}
{{- index $existing.data "redis-password" | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment giving a herd container HERD_REDIS_URL. For the bundled Redis with a password the URL is built by
Kubernetes from REDIS_PASSWORD ($(VAR) expansion), so the password never appears in the pod spec.
*/}}
{{- define "herd.redisEnv" -}}
- name: HERD_REDIS_PREFIX
  value: {{ .Values.redisPrefix | quote }}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "herd.redisPasswordSecret" . }}
      key: {{ include "herd.redisPasswordKey" . }}
- name: HERD_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%d/0" (include "herd.redisName" .) (int .Values.redis.service.port) | quote }}
{{- else }}
- name: HERD_REDIS_URL
  value: {{ printf "redis://%s:%d/0" (include "herd.redisName" .) (int .Values.redis.service.port) | quote }}
{{- end }}
{{- else }}
{{- if not (or .Values.externalRedis.url .Values.externalRedis.existingSecret) }}
{{- fail "redis.enabled is false: set externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
- name: HERD_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.externalRedis.existingSecret }}
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretUrlKey }}
      {{- else }}
      name: {{ include "herd.secretName" . }}
      key: redis-url
      {{- end }}
{{- with .Values.externalRedis }}
{{- if .username }}
- name: HERD_REDIS_USERNAME
  value: {{ .username | quote }}
{{- end }}
{{- if .passwordSecret.name }}
- name: HERD_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .passwordSecret.name }}
      key: {{ .passwordSecret.key }}
{{- end }}
{{- if .tls.enabled }}
- name: HERD_REDIS_TLS
  value: "true"
- name: HERD_REDIS_TLS_VERIFY
  value: {{ .tls.verify | toString | quote }}
{{- if .tls.secret }}
{{- if .tls.caKey }}
- name: HERD_REDIS_TLS_CA_FILE
  value: {{ printf "/etc/herd/redis-tls/%s" .tls.caKey | quote }}
{{- end }}
{{- if .tls.certKey }}
- name: HERD_REDIS_TLS_CERT_FILE
  value: {{ printf "/etc/herd/redis-tls/%s" .tls.certKey | quote }}
- name: HERD_REDIS_TLS_KEY_FILE
  value: {{ printf "/etc/herd/redis-tls/%s" .tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if .sentinel.hosts }}
- name: HERD_REDIS_SENTINELS
  value: {{ join "," .sentinel.hosts | quote }}
- name: HERD_REDIS_SENTINEL_SERVICE
  value: {{ .sentinel.service | quote }}
{{- if .sentinel.passwordSecret.name }}
- name: HERD_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .sentinel.passwordSecret.name }}
      key: {{ .sentinel.passwordSecret.key }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The external Redis's TLS files (CA, client certificate), mounted where HERD_REDIS_TLS_*_FILE point. */}}
{{- define "herd.redisTlsMount" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled .Values.externalRedis.tls.secret }}
- name: redis-tls
  mountPath: /etc/herd/redis-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "herd.redisTlsVolume" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled .Values.externalRedis.tls.secret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.externalRedis.tls.secret }}
{{- end }}
{{- end }}

{{/* HERD_* settings from a config dict (the global `config`, merged with a worker group's overrides). */}}
{{- define "herd.configEnv" -}}
{{- $names := dict
  "logLevel" "HERD_LOG_LEVEL"
  "queueMax" "HERD_QUEUE_MAX"
  "retryAfterS" "HERD_RETRY_AFTER_S"
  "queueWaitTimeoutS" "HERD_QUEUE_WAIT_TIMEOUT_S"
  "heartbeatIntervalS" "HERD_HEARTBEAT_INTERVAL_S"
  "heartbeatTtlS" "HERD_HEARTBEAT_TTL_S"
  "nCtx" "HERD_N_CTX"
  "maxSeqs" "HERD_MAX_SEQS"
  "nBatch" "HERD_N_BATCH"
  "prefillChunk" "HERD_PREFILL_CHUNK"
  "prefillBudget" "HERD_PREFILL_BUDGET"
  "nThreads" "HERD_N_THREADS"
  "nGpuLayers" "HERD_N_GPU_LAYERS"
  "mainGpu" "HERD_MAIN_GPU"
  "flashAttn" "HERD_FLASH_ATTN"
  "tensorSplit" "HERD_TENSOR_SPLIT"
  "typeK" "HERD_TYPE_K"
  "typeV" "HERD_TYPE_V"
  "cpuRepack" "HERD_CPU_REPACK"
  "speculate" "HERD_SPECULATE"
  "specK" "HERD_SPEC_K"
  "specMin" "HERD_SPEC_MIN" }}
{{- $text := list "logLevel" "heartbeatIntervalS" "heartbeatTtlS" "queueWaitTimeoutS" "typeK" "typeV" "flashAttn" "cpuRepack" "speculate" }}
{{- range $key := keys . | sortAlpha }}
{{- $value := get $ $key }}
- name: {{ get $names $key }}
  {{- if eq $key "tensorSplit" }}
  value: {{ join "," $value | quote }}
  {{- else }}
  {{- /* integers as integers: a large float64 would otherwise print as 1e+06 */}}
  value: {{ (has $key $text | ternary $value (int64 $value)) | toString | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{/* OpenTelemetry environment (nothing when no endpoint is set). */}}
{{- define "herd.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otel.serviceName | quote }}
{{- end }}
{{- end }}

{{/* "name=/models/file,..." for every worker group whose model is a file on the models volume. */}}
{{- define "herd.allModelsEnv" -}}
{{- $entries := list }}
{{- range .Values.workers }}
{{- if .model.file }}
{{- $entries = append $entries (printf "%s=%s/%s" .model.name (trimSuffix "/" $.Values.models.mountPath) .model.file) }}
{{- end }}
{{- end }}
{{- $entries | uniq | join "," }}
{{- end }}

{{/*
The bundled Redis's --maxmemory in bytes: redis.maxmemoryPercent of the container's memory limit, so Redis refuses
writes (noeviction) before the kubelet kills it for exceeding the limit. Empty when there is no memory limit.
*/}}
{{- define "herd.redisMaxmemory" -}}
{{- $limit := "" }}
{{- with .Values.redis.resources }}{{ with .limits }}{{ $limit = toString (.memory | default "") }}{{ end }}{{ end }}
{{- if $limit }}
{{- $m := regexFindAll "^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$" $limit 1 }}
{{- if not $m }}
{{- fail (printf "redis.resources.limits.memory %q: use an integer with an optional Ki, Mi, Gi, Ti, k, M, G or T suffix" $limit) }}
{{- end }}
{{- $number := regexFind "^[0-9]+" $limit | int64 }}
{{- $unit := trimPrefix (toString $number) $limit }}
{{- $scale := get (dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776) $unit }}
{{- div (mul $number $scale (int64 .Values.redis.maxmemoryPercent)) 100 }}
{{- end }}
{{- end }}

{{/* A worker group's setting: the group's own value when it has the key, else workerDefaults'. */}}
{{- define "herd.workerProbe" -}}
{{- $probe := deepCopy (get .defaults .name) }}
{{- range $key, $value := (get .group .name | default dict) }}
{{- $_ := set $probe $key $value }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
